"""Which weights live on the GPU and which wait in pinned host memory, worked out from exact byte counts.

Every request type must be served on one 80 GB GPU, degrade on a 48 GB one instead of failing, and keep
everything resident where it fits (an H200). This module decides that placement before anything is loaded and
provides the mechanics of a swap:

- Byte accounting, exact: element counts read from the safetensors headers of the weights folders (never the
  tensor data, which is tens of GB), or from in-memory modules (meta-device models at FLUX.1's real configs in
  CPU tests); the fp8 size of a transformer from its Linear shapes (torchao's per-row float8: 1 byte per weight
  plus one float32 scale per output row); the two rank-128 bf16 LoRA slots `lora_loader.hotswap` puts on every
  Linear layer.
- `plan_residency`: a pure function from those sizes, the GPU's allocatable bytes and a measured host->GPU copy
  rate to a `ResidencyPlan`: what is on the GPU, what waits on the host, the peak with activations, the free
  margin, which request kinds may wait for a swap and for how long. `describe()` gives the lines to log at
  setup, `switch_line()` the line to log at each swap.
- `ParkedModule` moves a module's tensors to pinned host memory and back in place (the module, its Parameter
  objects and any compiled graph or peft layer holding them stay the same), measuring every move;
  `measure_copy_rate` gives the rate the plan turns bytes into seconds with.

Sizes are bytes everywhere; logs show GiB (memory) and GB/s (bus rates, as PCIe is quoted).
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from lora_loader.hotswap import DEFAULT_MAX_RANK, SLOTS
from weights.layout import FLUX_DEV, FLUX_SCHNELL, NSFW_CLASSIFIER, SAFETY_CHECKER

GIB = 2**30
GB = 10**9

# Peak activations beside the weights at the largest size served (1440x1440), measured on CPU in bf16 as peak
# memory growth: VAE decode 3.96 GiB, a single block 0.80, a double block with LoRA slots 0.75; they run one after
# the other. /work/shared/reference/gpu-plan.md keeps about 4.5 GiB free for them: the largest plus a margin.
ACTIVATION_HEADROOM = int(4.5 * GIB)

COPY_RATE_SAMPLE_BYTES = 256 * 2**20  # large enough for a PCIe copy to reach its steady rate

# torchao's float8 per-row weights: 1 byte per element plus one float32 scale per output row. Layers whose
# dimensions are not multiples of 16 are left in bf16 (torchao's `_fp8_mm_compat`: `_scaled_mm` needs them).
FP8_WEIGHT_ITEMSIZE = 1
FP8_ROW_SCALE_ITEMSIZE = 4
FP8_DIM_MULTIPLE = 16

MODELS = ("dev", "schnell")
Where = Literal["gpu", "host"]


# Byte accounting


def checkpoint_bytes(files_or_folder: str | Path | Iterable[str | Path], dtype: torch.dtype | None = None) -> int:
    """Bytes the tensors of these safetensors files (or of every `*.safetensors` in a folder) take once loaded.

    `dtype` is the dtype the model is loaded in: floating-point tensors count at its itemsize, others (integer
    buffers) as stored, which is what `from_pretrained(dtype=...)` does. None: as stored. Only the headers are
    read. (transformers keeps T5's `wo` layers in float32 when loading in float16; this server never does.)"""
    return sum(_entry_bytes(entry, dtype) for file in _safetensors_files(files_or_folder) for entry in _header(file))


def module_bytes(module: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of a module's parameters and buffers, shared ones once. None: as held (meta tensors count as their
    size; tensor subclasses such as torchao's Float8Tensor count their inner tensors); a dtype: plain
    floating-point tensors counted at that dtype, as `module.to(dtype)` would hold them."""
    total = 0
    for _, tensor in _named_tensors(module):
        if dtype is not None and tensor.is_floating_point() and not is_traceable_wrapper_subclass(tensor):
            total += tensor.numel() * dtype.itemsize
        else:
            total += sum(leaf.numel() * leaf.element_size() for leaf in _inner_tensors(tensor))
    return total


def linear_shapes(source: torch.nn.Module | str | Path) -> list[tuple[int, int]]:
    """(out_features, in_features) of every Linear layer: from a module, or from a folder's headers, where they
    are the 2-D `.weight` tensors (in FLUX.1's transformer, which has no embedding tables, exactly the Linears).
    Call it on a transformer without LoRA layers: peft's lora_A / lora_B are Linear layers too."""
    if isinstance(source, torch.nn.Module):
        return [(m.out_features, m.in_features) for m in source.modules() if isinstance(m, torch.nn.Linear)]
    return [
        (entry["shape"][0], entry["shape"][1])
        for file in _safetensors_files(source)
        for entry in _header(file)
        if entry["name"].endswith(".weight") and len(entry["shape"]) == 2
    ]


def fp8_bytes(source: torch.nn.Module | str | Path) -> int:
    """Bytes of a transformer after torchao's `Float8DynamicActivationFloat8WeightConfig(PerRow())`, which
    quantizes every Linear weight it can; everything else (biases, norms) stays bf16."""
    saved = 0
    for rows, columns in linear_shapes(source):
        if rows % FP8_DIM_MULTIPLE == 0 and columns % FP8_DIM_MULTIPLE == 0:
            fp8 = rows * columns * FP8_WEIGHT_ITEMSIZE + rows * FP8_ROW_SCALE_ITEMSIZE
            saved += rows * columns * torch.bfloat16.itemsize - fp8
    return _bytes(source, torch.bfloat16) - saved


def slot_pair_bytes(source: torch.nn.Module | str | Path, rank: int = DEFAULT_MAX_RANK) -> int:
    """Bytes of the LoRA slots `lora_loader.hotswap` adds to a transformer: `len(SLOTS)` bf16 slots of `rank` on
    every Linear layer, lora_A (rank x in) and lora_B (out x rank). peft's 0-dim scale tensors (a few KB) are not
    counted."""
    elements = sum(rank * (rows + columns) for rows, columns in linear_shapes(source))
    return len(SLOTS) * elements * torch.bfloat16.itemsize


def _bytes(source: torch.nn.Module | str | Path, dtype: torch.dtype) -> int:
    if isinstance(source, torch.nn.Module):
        return module_bytes(source, dtype)
    return checkpoint_bytes(source, dtype)


def _safetensors_files(files_or_folder: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(files_or_folder, str | Path):
        path = Path(files_or_folder)
        # A weights folder holds one checkpoint (sharded or not), as weights.layout's allow_patterns fetch it.
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    else:
        files = [Path(file) for file in files_or_folder]
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {files_or_folder}")
    return files


def _header(file: Path) -> list[dict]:
    """The tensor entries of a safetensors header: the format is an 8-byte little-endian length, that much JSON,
    then the data. safetensors' `safe_open` would map the whole file and check its length; this reads the
    header alone."""
    with open(file, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        header = json.loads(stream.read(length))
    header.pop("__metadata__", None)
    return [{"name": name, **entry} for name, entry in header.items()]


def _entry_bytes(entry: dict, dtype: torch.dtype | None) -> int:
    start, end = entry["data_offsets"]
    # Floating-point safetensors dtypes are F64, F32, F16, BF16 and the F8_* family; loaders cast only those.
    if dtype is None or not entry["dtype"].startswith(("F", "BF")):
        return end - start
    return math.prod(entry["shape"]) * dtype.itemsize


def _named_tensors(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters then buffers, each shared tensor once (T5's tied embedding, say)."""
    yield from module.named_parameters()
    yield from module.named_buffers()


def _inner_tensors(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    for owner, attribute in _storages(tensor):
        yield owner if attribute is None else getattr(owner, attribute)


def _storages(tensor: torch.Tensor) -> Iterator[tuple[torch.Tensor, str | None]]:
    """Where a tensor's data lives: (tensor, None) for a plain tensor, whose `.data` can be replaced; for a
    wrapper subclass (torchao's Float8Tensor keeps `qdata` and a per-row `scale`), (wrapper, attribute) for each
    plain tensor inside it, found through the subclass protocol torch.compile uses too (`__tensor_flatten__`)."""
    if not is_traceable_wrapper_subclass(tensor):
        yield tensor, None
        return
    for attribute in tensor.__tensor_flatten__()[0]:
        inner = getattr(tensor, attribute)
        if is_traceable_wrapper_subclass(inner):
            yield from _storages(inner)
        else:
            yield tensor, attribute


@dataclass(frozen=True)
class TransformerBytes:
    """One FLUX.1 transformer: bf16 weights, fp8 weights, and its pair of bf16 LoRA slots."""

    bf16: int
    fp8: int
    slot_pair: int

    @classmethod
    def from_checkpoint(cls, folder: str | Path) -> TransformerBytes:
        """From the headers of a `transformer/` folder."""
        return cls(checkpoint_bytes(folder, torch.bfloat16), fp8_bytes(folder), slot_pair_bytes(folder))

    @classmethod
    def from_module(cls, transformer: torch.nn.Module) -> TransformerBytes:
        """From a transformer without LoRA layers, in any dtype or on the meta device (counted at bf16)."""
        return cls(module_bytes(transformer, torch.bfloat16), fp8_bytes(transformer), slot_pair_bytes(transformer))


@dataclass(frozen=True)
class Components:
    """The byte sizes the plan places. The server holds the transformers, T5-XXL, CLIP-L, the VAE and the
    CompVis checker in bf16 on a GPU; the Falcons.ai classifier in its stored dtype (loaded without a dtype)."""

    transformers: Mapping[str, TransformerBytes]  # by model: dev, schnell
    t5: int  # T5-XXL encoder
    small: int  # CLIP-L + VAE + CompVis safety checker + Falcons.ai classifier
    headroom: int = ACTIVATION_HEADROOM

    @classmethod
    def from_weights(cls, weights_dir: str | Path) -> Components:
        """From the safetensors headers under WEIGHTS_DIR (`weights.layout`'s folders); nothing is loaded."""
        root = Path(weights_dir)
        dev, schnell = root / FLUX_DEV.name, root / FLUX_SCHNELL.name
        small = (
            checkpoint_bytes(dev / "text_encoder", torch.bfloat16)
            + checkpoint_bytes(dev / "vae", torch.bfloat16)
            + checkpoint_bytes(root / SAFETY_CHECKER.name, torch.bfloat16)
            + checkpoint_bytes(root / NSFW_CLASSIFIER.name)
        )
        return cls(
            transformers={
                "dev": TransformerBytes.from_checkpoint(dev / "transformer"),
                "schnell": TransformerBytes.from_checkpoint(schnell / "transformer"),
            },
            t5=checkpoint_bytes(dev / "text_encoder_2", torch.bfloat16),
            small=small,
        )

    @classmethod
    def from_modules(
        cls,
        transformers: Mapping[str, torch.nn.Module],
        t5: torch.nn.Module,
        small: Iterable[torch.nn.Module],
    ) -> Components:
        """From modules (real, or on the meta device): transformers and T5 counted at bf16, whatever they hold
        now; the small models as they are held, since each loads in its own dtype."""
        return cls(
            transformers={model: TransformerBytes.from_module(module) for model, module in transformers.items()},
            t5=module_bytes(t5, torch.bfloat16),
            small=sum(module_bytes(module) for module in small),
        )


# The plan


class NotEnoughGpuMemory(RuntimeError):
    """Not even one bf16 transformer with the text encoders fits: the server cannot run on this GPU."""


@dataclass(frozen=True)
class Placement:
    component: str  # "dev bf16", "schnell fp8", "t5", "fp8 buffer", ...
    where: Where
    bytes: int


@dataclass(frozen=True)
class Swap:
    """A copy from pinned host memory into a GPU buffer that requests of these kinds may have to wait for
    (when the buffer holds the other model's weights)."""

    requests: tuple[str, ...]  # request kinds, see request_kind()
    component: str  # what is copied in
    bytes: int
    seconds: float  # bytes / the copy rate the plan was made with


def request_kind(model: str, go_fast: bool) -> str:
    return f"{model} go_fast" if go_fast else model


@dataclass(frozen=True)
class ResidencyPlan:
    name: str
    gpu_bytes: int  # allocatable on the GPU
    placements: tuple[Placement, ...]
    headroom: int  # activations, kept free beside the resident weights
    swaps: tuple[Swap, ...]
    copy_rate: float  # host -> GPU bytes per second the swap times are computed with
    fp8_served: bool
    fp8_reason: str | None = None  # why go_fast runs bf16 although fp8 was wanted

    @property
    def resident(self) -> int:
        return sum(p.bytes for p in self.placements if p.where == "gpu")

    @property
    def host(self) -> int:
        """Pinned host memory the parked weights take."""
        return sum(p.bytes for p in self.placements if p.where == "host")

    @property
    def peak(self) -> int:
        return self.resident + self.headroom

    @property
    def margin(self) -> int:
        return self.gpu_bytes - self.peak

    def where(self, component: str) -> Where:
        return next(p.where for p in self.placements if p.component == component)

    def swap_for(self, model: str, go_fast: bool) -> Swap | None:
        """The swap a request of this kind may wait for; None: it never waits."""
        kind = request_kind(model, go_fast)
        return next((swap for swap in self.swaps if kind in swap.requests), None)

    def describe(self) -> list[str]:
        """The lines to log at setup."""
        lines = [f"Residency plan: {self.name} ({_gib(self.gpu_bytes)} GiB allocatable on the GPU)"]
        width = max(len(p.component) for p in self.placements)
        for p in self.placements:
            parked = " (pinned, copied in when needed)" if p.where == "host" else ""
            lines.append(f"  {p.where:<4}  {p.component:<{width}}  {_gib(p.bytes):>6} GiB{parked}")
        lines.append(
            f"  peak {_gib(self.peak)} GiB = resident {_gib(self.resident)} + activations {_gib(self.headroom)}; "
            f"free margin {_gib(self.margin)} GiB; pinned host memory {_gib(self.host)} GiB"
        )
        for swap in self.swaps:
            lines.append(
                f"  {', '.join(swap.requests)} may wait {swap.seconds:.2f} s for {swap.component} "
                f"({_gib(swap.bytes)} GiB at {self.copy_rate / GB:.1f} GB/s)"
            )
        waiting = {kind for swap in self.swaps for kind in swap.requests}
        never = [
            request_kind(m, fast) for fast in (False, True) for m in MODELS if request_kind(m, fast) not in waiting
        ]
        lines.append(f"  never wait for a swap: {', '.join(never) or 'none'}")
        if self.fp8_reason:
            lines.append(f"  go_fast runs bf16: {self.fp8_reason}")
        return lines


def plan_residency(components: Components, gpu_bytes: int, fp8_wanted: bool, *, copy_rate: float) -> ResidencyPlan:
    """The first of these that fits `gpu_bytes` with the activation headroom free:

    1. everything resident: bf16 dev + schnell, T5, small models, a slot pair on each compiled transformer, and
       with `fp8_wanted` both fp8 transformers with theirs (an H200);
    2. with `fp8_wanted`: the bf16 set resident, so bf16 requests never wait, plus ONE fp8 buffer (the larger fp8
       transformer and a slot pair); both fp8 transformers wait in pinned host memory and a go_fast request for
       the other model waits for its copy (an 80 GB H100). The buffer's slot pair stays: the request's LoRAs
       are swapped into it anyway (`lora_loader.hotswap` empties the other model's slots);
    3. one bf16 transformer (a buffer the size of the larger) with its slots, T5 and the small models; both
       bf16 transformers wait in pinned host memory, a request for the other model waits for its copy, and
       go_fast runs bf16 (a 48 GB L40S).

    Raises NotEnoughGpuMemory when not even 3 fits."""

    def fits(placements: list[Placement]) -> bool:
        return _resident(placements) + components.headroom <= gpu_bytes

    def plan(name: str, placements: list[Placement], swaps: list[Swap], fp8_reason: str | None = None):
        return ResidencyPlan(
            name=name,
            gpu_bytes=gpu_bytes,
            placements=tuple(placements),
            headroom=components.headroom,
            swaps=tuple(swaps),
            copy_rate=copy_rate,
            fp8_served=fp8_wanted and fp8_reason is None,
            fp8_reason=fp8_reason,
        )

    transformers = components.transformers
    everything = _bf16_set(components) + (_fp8_set(components) if fp8_wanted else [])
    if fits(everything):
        return plan("everything resident", everything, [])

    with_buffer = _bf16_set(components) + _fp8_buffer(components)
    if fp8_wanted and fits(with_buffer):
        swaps = [_swap((request_kind(m, True),), f"{m} fp8", transformers[m].fp8, copy_rate) for m in MODELS]
        return plan("bf16 resident, one fp8 buffer", with_buffer, swaps)

    one = _one_bf16(components)
    if not fits(one):
        raise NotEnoughGpuMemory(
            f"FLUX.1 needs at least {_gib(_resident(one) + components.headroom)} GiB of GPU memory (one bf16 "
            f"transformer with its LoRA slots, T5-XXL, the small models and {_gib(components.headroom)} GiB of "
            f"activations); this GPU has {_gib(gpu_bytes)} GiB allocatable"
        )
    swaps = [_swap((m, request_kind(m, True)), f"{m} bf16", transformers[m].bf16, copy_rate) for m in MODELS]
    reason = None
    if fp8_wanted:
        needed = _resident(with_buffer) + components.headroom
        available = f"{_gib(needed)} GiB needed, {_gib(gpu_bytes)} GiB allocatable"
        reason = f"an fp8 transformer does not fit beside the bf16 ones ({available})"
    return plan("one bf16 transformer resident", one, swaps, reason)


def _shared(components: Components) -> list[Placement]:
    return [Placement("t5", "gpu", components.t5), Placement("small models", "gpu", components.small)]


def _bf16_set(components: Components) -> list[Placement]:
    """Both bf16 transformers, a slot pair on each, and the models they share: what bf16 requests need."""
    sizes = components.transformers
    return [
        *(Placement(f"{model} bf16", "gpu", sizes[model].bf16) for model in MODELS),
        *(Placement(f"{model} bf16 slots", "gpu", sizes[model].slot_pair) for model in MODELS),
        *_shared(components),
    ]


def _fp8_set(components: Components) -> list[Placement]:
    sizes = components.transformers
    return [
        *(Placement(f"{model} fp8", "gpu", sizes[model].fp8) for model in MODELS),
        *(Placement(f"{model} fp8 slots", "gpu", sizes[model].slot_pair) for model in MODELS),
    ]


def _fp8_buffer(components: Components) -> list[Placement]:
    """Room for either fp8 transformer with one slot pair; both wait on the host."""
    sizes = components.transformers
    return [
        Placement("fp8 buffer", "gpu", max(sizes[model].fp8 for model in MODELS)),
        Placement("fp8 buffer slots", "gpu", max(sizes[model].slot_pair for model in MODELS)),
        *(Placement(f"{model} fp8", "host", sizes[model].fp8) for model in MODELS),
    ]


def _one_bf16(components: Components) -> list[Placement]:
    """Room for either bf16 transformer with one slot pair, and the shared models; both wait on the host."""
    sizes = components.transformers
    return [
        Placement("bf16 buffer", "gpu", max(sizes[model].bf16 for model in MODELS)),
        Placement("bf16 buffer slots", "gpu", max(sizes[model].slot_pair for model in MODELS)),
        *_shared(components),
        *(Placement(f"{model} bf16", "host", sizes[model].bf16) for model in MODELS),
    ]


def _resident(placements: list[Placement]) -> int:
    return sum(p.bytes for p in placements if p.where == "gpu")


def _swap(requests: tuple[str, ...], component: str, nbytes: int, copy_rate: float) -> Swap:
    return Swap(requests, component, nbytes, nbytes / copy_rate)


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f}"


# Moving weights between the GPU and host memory


@dataclass(frozen=True)
class Transfer:
    """One measured move: bytes copied and the seconds it took, copies finished (synchronized)."""

    bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else math.inf


def switch_line(component: str, transfer: Transfer, planned: Swap | None = None) -> str:
    """The line to log at each swap: what was copied in, how long it took, and what the plan expected."""
    line = (
        f"Swapped {component} onto the GPU: {_gib(transfer.bytes)} GiB in {transfer.seconds:.2f} s "
        f"({transfer.rate / GB:.1f} GB/s)"
    )
    return f"{line}; planned {planned.seconds:.2f} s" if planned else line


def measure_copy_rate(device: str | torch.device, nbytes: int = COPY_RATE_SAMPLE_BYTES, repeats: int = 3) -> float:
    """Bytes per second of a copy from pinned host memory to `device`, the best of `repeats` after one warm-up
    copy (which pays for lazy initialisation, not bandwidth). On a CPU, where nothing can be pinned, this is a
    host memcpy rate: a placeholder that keeps the code path the same, not a bus rate."""
    device = torch.device(device)
    source = torch.empty(nbytes, dtype=torch.uint8, pin_memory=_pinnable(device))
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    best = math.inf
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        target.copy_(source, non_blocking=True)
        _synchronize(device)
        if attempt:
            best = min(best, time.perf_counter() - start)
    return nbytes / best


HOST_ALIGNMENT = 512  # bytes between host copies in one block: every dtype's alignment, and DMA-friendly


class ParkedModule:
    """Moves a module's parameters and buffers between `device` and host memory, in place.

    Only the tensors' storage moves (`tensor.data`, or the inner tensors of a wrapper subclass such as torchao's
    Float8Tensor): the module, its Parameter and buffer objects, and whatever holds them (a compiled graph, peft's
    LoRA layers, the pipeline) stay the same. Host copies are allocated on the first `park()`, as views into one
    block of host memory, pinned when the device is CUDA (so copies are asynchronous DMA at full bus rate), and
    kept while the module has the tensor. Tensors for which `read_only(name)` is true (base weights: nothing is
    ever fused into them) are not copied back after the first park, since their host copy is still exact;
    everything else is. It starts unparked wherever the module is: `park()` a module loaded on the CPU to have it
    wait in pinned memory."""

    def __init__(
        self,
        module: torch.nn.Module,
        device: str | torch.device,
        *,
        read_only: Callable[[str], bool] = lambda name: False,
    ):
        self.module = module
        self.device = torch.device(device)
        self.read_only = read_only
        self.parked = False
        self._host: dict[str, torch.Tensor] = {}

    def park(self) -> Transfer:
        """Device -> host; the device memory is freed once nothing else refers to it."""
        if self.parked:
            return Transfer(0, 0.0)
        start, copied, moves = time.perf_counter(), 0, []
        places = self._current_places()
        new = self._allocate([(key, _get(owner, attribute)) for key, _, owner, attribute in places])
        with torch.inference_mode(False):  # plain tensors whatever mode the caller is in (peft sets requires_grad)
            for key, name, owner, attribute in places:
                host = self._host[key]
                if key in new or not self.read_only(name):
                    host.copy_(_get(owner, attribute), non_blocking=True)
                    copied += host.numel() * host.element_size()
                moves.append((owner, attribute, host))
            _synchronize(self.device)  # the host copies must be complete before the device tensors are let go
            for owner, attribute, host in moves:
                _set(owner, attribute, host)
        self.parked = True
        return Transfer(copied, time.perf_counter() - start)

    def unpark(self) -> Transfer:
        """Host -> device, from the kept host copies."""
        if not self.parked:
            return Transfer(0, 0.0)
        start, copied, moves = time.perf_counter(), 0, []
        places = self._current_places()
        # A tensor added while parked has no host copy yet: one in host memory gets one now (pinned); one made on
        # the device (peft makes LoRA layers where the weight says it is) stays where it is.
        added = [(key, _get(owner, attribute)) for key, _, owner, attribute in places if key not in self._host]
        for key in self._allocate([(key, tensor) for key, tensor in added if tensor.device.type == "cpu"]):
            self._host[key].copy_(dict(added)[key])
        with torch.inference_mode(False):
            for key, _, owner, attribute in places:
                if key in self._host:
                    host = self._host[key]
                    moves.append((owner, attribute, host.to(self.device, non_blocking=True, copy=True)))
                    copied += host.numel() * host.element_size()
            _synchronize(self.device)
            for owner, attribute, tensor in moves:
                _set(owner, attribute, tensor)
        self.parked = False
        return Transfer(copied, time.perf_counter() - start)

    def _current_places(self) -> list[tuple[str, str, torch.Tensor, str | None]]:
        """The module's tensors now; host copies of tensors it no longer has (a removed LoRA adapter) are let go,
        so its host memory does not grow with every adapter it ever held."""
        places = list(self._places())
        keys = {key for key, *_ in places}
        for key in [key for key in self._host if key not in keys]:
            del self._host[key]
        return places

    def _allocate(self, tensors: list[tuple[str, torch.Tensor]]) -> set[str]:
        """Host copies for the keys that have none, as views into ONE pinned block: the CUDA host allocator rounds
        each pinned allocation up to a power of two, which would cost FLUX's weights about 1.4x their size."""
        wanted = [(key, tensor) for key, tensor in tensors if key not in self._host]
        offsets, total = [], 0
        for _, tensor in wanted:
            offsets.append(total)
            total += -(-tensor.numel() * tensor.element_size() // HOST_ALIGNMENT) * HOST_ALIGNMENT
        block = torch.empty(total, dtype=torch.uint8, pin_memory=self._pin)
        for (key, tensor), offset in zip(wanted, offsets, strict=True):
            nbytes = tensor.numel() * tensor.element_size()
            self._host[key] = block[offset : offset + nbytes].view(tensor.dtype).view(tensor.shape)
        return {key for key, _ in wanted}

    @property
    def _pin(self) -> bool:
        return _pinnable(self.device)

    def _places(self) -> Iterator[tuple[str, str, torch.Tensor, str | None]]:
        """(key of the host copy, tensor name, owner, attribute) for each plain tensor holding data."""
        for name, tensor in _named_tensors(self.module):
            for index, (owner, attribute) in enumerate(_storages(tensor)):
                yield f"{name}:{index}", name, owner, attribute


def _get(owner: torch.Tensor, attribute: str | None) -> torch.Tensor:
    return owner.data if attribute is None else getattr(owner, attribute)


def _set(owner: torch.Tensor, attribute: str | None, tensor: torch.Tensor) -> None:
    # `.data =` keeps the Parameter object; a wrapper subclass ignores it, so its inner tensor is replaced.
    if attribute is None:
        owner.data = tensor
    else:
        setattr(owner, attribute, tensor)


def _pinnable(device: torch.device) -> bool:
    """Pinned memory needs a CUDA runtime; on a CPU-only machine plain host memory is all there is."""
    return device.type == "cuda"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
