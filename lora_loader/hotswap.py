"""LoRAs on a FLUX transformer that torch.compile compiles: swapped into fixed slots in place, never recompiled.

`AdapterManager` attaches a new peft adapter per LoRA file and deletes the old one. On a compiled transformer
every such change adds or removes modules, which invalidates the compiled graph: the next call recompiles.
`HotswapAdapterManager` has the same `apply(model, main, extra, multiplier=...)` and keeps the same rules
(linear scales, `multiplier` on both, the same file twice applies once), but never changes the structure of
the module:

- `prepare(models, max_rank)` runs once, BEFORE compiling: it gives every Linear layer of each transformer two
  LoRA slots, `slot_main` and `slot_extra`, of rank `max_rank`, filled with zeros (the placeholder), makes both
  active for good, and turns their per-layer scales into 0-dim tensors (peft's
  `prepare_model_for_compiled_hotswap`, the mechanism behind diffusers' `enable_lora_hotswap`). A compiled
  graph reads those tensors and the slots' weights as inputs, so changing their values never recompiles.
- A new LoRA file is copied into a slot in place (peft's `hotswap_adapter_from_state_dict`): layers it lacks
  are zeroed, lower ranks are zero-padded, which leaves ΔW = lora_B @ lora_A exact. A file already in a slot
  of that model is only re-scaled, whichever slot it sits in and whichever role (main or extra) it has now:
  A + B and B + A differ by float rounding only.
- A scale is written into the slot's scale tensors (`fill_`); a slot the request does not use gets scale 0,
  which adds exactly nothing, and keeps its LoRA for a later request (`resident` lists such parked LoRAs too).
  Slots of the other model are emptied (zeros, scale 0), so at most two LoRAs are ever resident, and
  `empty()` empties every slot when a request runs on the plain path instead.
- The placeholder covers every Linear layer of FluxTransformer2DModel, which is everything
  `formats.load_lora_state_dict` ever returns for the transformer, so no LoRA the server reads needs a module
  the slots lack.

Why peft's hotswap function and not `load_lora_weights(..., hotswap=True)`: diffusers builds a LoraConfig per
file, and for a file whose layers have different ranks (a kohya file with block-diagonal fused qkv layers, say)
that config carries an `alpha_pattern` the slot's config lacks; diffusers then refuses the swap AND deletes the
slot, which would force a recompile. The converted files carry their alpha folded in, so the slot's own config
(alpha = rank = max_rank, scale factor 1) is right for every file, and we pass it.

The compiled path takes a file only if it can take ALL of it. What it cannot take raises `NotHotswappable`
before the model is touched, saying what and why, so the caller runs that request on the plain (uncompiled) path
with `AdapterManager`, which applies the whole file: text-encoder layers (CLIP-L, T5-XXL, CLIP embeddings: the
slots live on the transformer only), bias changes (ComfyUI's `diff_b`: the slots have no bias), a rank above
`max_rank`, or a layer the slots do not cover. A swap that fails part-way
(never expected after those checks) resets that slot to zeros and all scales of the model to 0: the model
then renders as the base model, never with half a LoRA.

Scales must never go through `set_adapters`, `set_scale` or `joint_attention_kwargs={"scale": ...}`: those
replace the scale tensors with Python floats (and set_adapters changes the active adapters), which recompiles.

The price of never recompiling: both slots run on every Linear layer at `max_rank` in every step, LoRA or not
(two rank-128 slots add about 7 TFLOP per FLUX.1 step at 1024², next to about 60 for the Linear layers, and
about 1.4 GB of bf16 weights per slot per transformer); a lower `max_rank` costs proportionally less.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from peft.tuners.lora import LoraLayer
from peft.utils.hotswap import hotswap_adapter_from_state_dict, prepare_model_for_compiled_hotswap

from .adapters import MODELS, FluxPipelines, LoraSpec, ResidentLora, _dedupe
from .errors import LoraError, prefixed
from .formats import SHORT_NAMES, ConvertedLora, load_lora_state_dict
from .targets import TEXT_ENCODERS, TRANSFORMER, LoraTargets

logger = logging.getLogger(__name__)

SLOTS = ("slot_main", "slot_extra")  # peft adapter names; the first is preferred for a new main LoRA
DEFAULT_MAX_RANK = 128  # diffusers' enable_lora_hotswap default
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


class NotHotswappable(LoraError):
    """This LoRA cannot go into the compiled model's slots; the message says why. The caller can run the request
    on the plain path instead: the checks run before anything changes, and a swap that fails part-way leaves
    that model's slots at scale 0 (the base model), never half a LoRA."""


@dataclass
class _Slot:
    adapter: str
    lora: ResidentLora | None = None
    key: str | None = None  # LoraSpec.key of the file in the slot
    scale: float | None = 0.0  # what its scale tensors hold; None: unknown (peft's swap writes them too)


@dataclass
class _Slots:
    """One prepared transformer: its LoRA layers by module name, and what each slot holds."""

    transformer: torch.nn.Module  # unwrapped from torch.compile's OptimizedModule
    layers: dict[str, LoraLayer]
    max_rank: int
    slots: dict[str, _Slot] = field(default_factory=lambda: {name: _Slot(name) for name in SLOTS})


class HotswapAdapterManager:
    """Owns the LoRA slots of prepared transformers; see the module docstring for the rules it keeps."""

    def __init__(self, models: FluxPipelines):
        self.models = models
        self.loads = 0  # files read and swapped in so far: re-scaling must never add to it
        self._prepared: dict[str, _Slots] = {}

    @property
    def resident(self) -> tuple[ResidentLora, ...]:
        """The LoRAs held in slots, active or parked at scale 0: at most two per prepared model."""
        return tuple(slot.lora for prepared in self._prepared.values() for slot in prepared.slots.values() if slot.lora)

    def prepare(
        self, models: Iterable[str] = MODELS, max_rank: int = DEFAULT_MAX_RANK, dtype: torch.dtype | None = None
    ) -> None:
        """Give each model's transformer its two zero slots of rank `max_rank`. Call BEFORE torch.compile.

        `dtype` is the slots' weight dtype, by default the transformer's; pass the compute dtype (bf16) for a
        transformer whose Linear weights are fp8."""
        for model in models:
            if model in self._prepared:
                continue
            transformer = _unwrap(self._pipeline(model).transformer)
            start = time.perf_counter()
            self._prepared[model] = _add_slots(transformer, max_rank, dtype or transformer.dtype)
            logger.info(
                "LoRA slots ready on FLUX.1 [%s]: 2 x rank %d on %d layers in %.2f s",
                model,
                max_rank,
                len(self._prepared[model].layers),
                time.perf_counter() - start,
            )

    def apply(self, model: str, main: LoraSpec | None, extra: LoraSpec | None, *, multiplier: float = 1.0) -> None:
        """Make `model` run with exactly these LoRAs at scale × multiplier. Raises NotHotswappable (or LoraError
        for a broken file) before changing anything if one of them cannot be swapped in."""
        prepared = self._slots_of(model)
        _rearm(prepared)  # before the scales are written: peft's set_adapter would not touch them, but be sure
        wanted = _dedupe(main, extra)
        placement = _place(prepared.slots, wanted)
        new = {name: spec for name, spec in placement.items() if prepared.slots[name].key != spec.key}
        incoming = {name: (spec, self._read(model, prepared, spec)) for name, spec in new.items()}
        for name, spec in placement.items():
            if name not in incoming:
                logger.info("LoRA %s already in %s; scale %g", spec.label, name, spec.scale * multiplier)
        try:
            for name, (spec, converted) in incoming.items():
                self._swap(model, prepared, prepared.slots[name], spec, converted)
        except BaseException:
            _set_scales(prepared, dict.fromkeys(SLOTS, 0.0))  # the base model, never a half-known state
            raise
        scales = {name: placement[name].scale * multiplier if name in placement else 0.0 for name in SLOTS}
        _set_scales(prepared, scales)
        self._empty_others(model)
        _log_scales(placement, scales, multiplier)

    def _slots_of(self, model: str) -> _Slots:
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, not {model!r}")
        prepared = self._prepared.get(model)
        if prepared is None:
            raise RuntimeError(f"FLUX.1 [{model}] has no LoRA slots: call prepare() before compiling it")
        return prepared

    # Reading and checking (nothing touched yet)

    def _read(self, model: str, prepared: _Slots, spec: LoraSpec) -> _Converted:
        """Read and convert the file, and check that every part of it fits a slot."""
        pipe = self._pipeline(model)
        targets = LoraTargets.of_modules(
            transformer=prepared.transformer,
            text_encoder=getattr(pipe, "text_encoder", None),
            text_encoder_2=getattr(pipe, "text_encoder_2", None),
        )
        with prefixed(f"LoRA {spec.label}"):
            converted = load_lora_state_dict(spec.path, targets)
            pairs = _pairs(converted)
            for module, (down, up) in pairs.items():
                _check_layer(prepared, module, down, up, converted.format)
        return _Converted(converted.format, pairs)

    # Swapping

    def _swap(self, model: str, prepared: _Slots, slot: _Slot, spec: LoraSpec, converted: _Converted) -> None:
        start = time.perf_counter()
        state_dict = {}
        for module, (down, up) in converted.pairs.items():
            state_dict[f"{module}.lora_A.{slot.adapter}.weight"] = down
            state_dict[f"{module}.lora_B.{slot.adapter}.weight"] = up
        slot.key, slot.lora, slot.scale = None, None, None  # until the copy is complete
        try:
            config = prepared.transformer.peft_config[slot.adapter]
            hotswap_adapter_from_state_dict(prepared.transformer, state_dict, adapter_name=slot.adapter, config=config)
        except Exception as error:
            _clear(prepared, slot)
            raise NotHotswappable(f"Could not swap LoRA {spec.label} into the compiled model: {error}") from error
        self.loads += 1
        slot.key = spec.key
        slot.lora = ResidentLora(slot.adapter, model, spec.label, converted.format, len(converted.pairs), 0)
        logger.info(
            "Swapped LoRA %s (%s, %d layers) into %s of FLUX.1 [%s] in %.2f s",
            spec.label,
            converted.format,
            len(converted.pairs),
            slot.adapter,
            model,
            time.perf_counter() - start,
        )

    def empty(self) -> None:
        """Every slot of every model back to zeros at scale 0: no LoRA resident (the graphs are unchanged)."""
        self._empty_others(None)

    def arm(self) -> None:
        """Both slots of every prepared model active with the weights' requires_grad as at compile time (see
        `_rearm`); cheap when they already are. Called whenever compiled code is about to run."""
        for prepared in self._prepared.values():
            _rearm(prepared)

    def _empty_others(self, model: str | None) -> None:
        """Only the requested model carries LoRAs; the others' slots go back to zeros at scale 0."""
        for other, prepared in self._prepared.items():
            if other == model:
                continue
            _set_scales(prepared, dict.fromkeys(SLOTS, 0.0))
            for slot in prepared.slots.values():
                if slot.key is not None:
                    _clear(prepared, slot)

    def _pipeline(self, model: str):
        return self.models.pipeline(model, "txt2img")


@dataclass(frozen=True)
class _Converted:
    format: str
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # transformer module -> (lora_A, lora_B)


def _unwrap(transformer: torch.nn.Module) -> torch.nn.Module:
    """The module itself, whether or not torch.compile wrapped it (`torch.compile(module)` does, `.compile()`
    and `compile_repeated_blocks` do not)."""
    return getattr(transformer, "_orig_mod", transformer)


# Slots


def _add_slots(transformer: torch.nn.Module, max_rank: int, dtype: torch.dtype) -> _Slots:
    """Both slots on every Linear layer, zero and active; scales as tensors (peft's compiled-hotswap preparation)."""
    if getattr(transformer, "peft_config", None):
        raise RuntimeError("prepare() needs a transformer without LoRA adapters")
    modules = LoraTargets.of_modules(transformer=transformer).linear_layers()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Already found a `peft_config` attribute")  # the second slot, on purpose
        for adapter in SLOTS:
            # Each slot gets its own zero tensors: low_cpu_mem_usage assigns them as the parameters, no copy.
            placeholder = _placeholder(transformer, modules, max_rank, dtype)
            transformer.load_lora_adapter(placeholder, adapter_name=adapter, prefix=None, low_cpu_mem_usage=True)
    transformer.set_adapters(list(SLOTS), [0.0] * len(SLOTS))  # both active from now on; emptiness is scale 0
    prepare_model_for_compiled_hotswap(transformer, target_rank=max_rank, config=transformer.peft_config)
    layers = {name: module for name, module in transformer.named_modules() if isinstance(module, LoraLayer)}
    return _Slots(transformer, layers, max_rank)


def _placeholder(
    transformer: torch.nn.Module, modules: list[str], rank: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """A LoRA of zeros on `modules`. Its lora_alpha is its rank, so peft's own scale factor alpha/rank is 1 and
    the scale tensors hold exactly the adapter weight."""
    state_dict = {}
    for name in modules:
        layer = transformer.get_submodule(name)
        options = dict(dtype=dtype, device=layer.weight.device)
        state_dict[name + LORA_A] = torch.zeros(rank, layer.in_features, **options)
        state_dict[name + LORA_B] = torch.zeros(layer.out_features, rank, **options)
    return state_dict


def _rearm(prepared: _Slots) -> None:
    """Both slots active again, as when the graphs were compiled. The plain path can run on these same modules
    (generation/execution.py: it runs them uncompiled) and its `AdapterManager` makes its own adapters the
    active ones; the compiled graphs guard on which adapters are active and on their weights' requires_grad, so
    anything else than the state at compile time would recompile. peft's layer-level `set_adapter` restores
    both without touching the scale tensors (diffusers' `set_adapters` would replace them with floats)."""
    wanted = list(SLOTS)
    for layer in prepared.layers.values():
        if layer.active_adapters != wanted:
            layer.set_adapter(wanted)


def _clear(prepared: _Slots, slot: _Slot) -> None:
    """Back to the placeholder: zeros in every layer of the slot, in place."""
    with torch.no_grad():
        for layer in prepared.layers.values():
            layer.lora_A[slot.adapter].weight.zero_()
            layer.lora_B[slot.adapter].weight.zero_()
    slot.key, slot.lora = None, None


def _set_scales(prepared: _Slots, scales: dict[str, float]) -> None:
    """Write each slot's scale into its tensors in place (skipping slots already there): never recompiles."""
    with torch.no_grad():
        for name, scale in scales.items():
            slot = prepared.slots[name]
            if slot.scale == scale:
                continue
            for layer in prepared.layers.values():
                layer.scaling[name].fill_(scale)
            slot.scale = scale


def _place(slots: dict[str, _Slot], wanted: list[LoraSpec]) -> dict[str, LoraSpec]:
    """Slot name -> the LoRA it must hold. A LoRA already in a slot stays there; new ones take the other slots,
    slot_main first."""
    held = {slot.key: name for name, slot in slots.items() if slot.key}
    placement = {held[spec.key]: spec for spec in wanted if spec.key in held}
    free = [name for name in slots if name not in placement]
    for spec in wanted:
        if spec.key not in held:
            placement[free.pop(0)] = spec
    return placement


# Checks


def _pairs(converted: ConvertedLora) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Transformer module -> (lora_A, lora_B); NotHotswappable for any part the slots cannot hold."""
    text = {SHORT_NAMES[c]: len(converted.layers(c)) for c in TEXT_ENCODERS if converted.layers(c)}
    if text:
        counted = " and ".join(f"{count} {name} text-encoder layer(s)" for name, count in text.items())
        raise NotHotswappable(
            f"It also changes {counted}; the compiled model's LoRA slots are on the transformer only."
        )
    if converted.has_bias(TRANSFORMER):
        raise NotHotswappable(
            "It also changes biases (ComfyUI's diff_b); the compiled model's LoRA slots have no bias."
        )
    state_dict = converted.part(TRANSFORMER)
    pairs = {}
    for key in sorted(state_dict):
        if key.endswith(LORA_A):
            module = key.removesuffix(LORA_A)
            pairs[module] = (state_dict[key], state_dict[module + LORA_B])
    return pairs


def _check_layer(prepared: _Slots, module: str, down: torch.Tensor, up: torch.Tensor, fmt: str) -> None:
    """The layer has a slot, the LoRA fits its shape (LoraError: a file for another model), and its rank fits."""
    layer = prepared.layers.get(module)
    if layer is None:
        raise NotHotswappable(f"This {fmt} LoRA changes layer {module}, which has no LoRA slot.")
    base = layer.get_base_layer()
    if down.shape[0] != up.shape[1]:
        raise LoraError(f"LoRA layer {module} is broken: lora_A has rank {down.shape[0]}, lora_B {up.shape[1]}.")
    if (up.shape[0], down.shape[1]) != (base.out_features, base.in_features):
        raise LoraError(
            f"LoRA layer {module} maps {down.shape[1]} -> {up.shape[0]} features, but this FLUX.1 model's maps "
            f"{base.in_features} -> {base.out_features}: the LoRA was made for another model."
        )
    if down.shape[0] > prepared.max_rank:
        raise NotHotswappable(
            f"It has rank {down.shape[0]} on layer {module}; the compiled model's LoRA slots hold "
            f"rank {prepared.max_rank} at most."
        )


def _log_scales(placement: dict[str, LoraSpec], scales: dict[str, float], multiplier: float) -> None:
    if not placement:
        return
    applied = ", ".join(f"{spec.label} {scales[name]:g} ({name})" for name, spec in placement.items())
    note = f" (LoRA scales x{multiplier:g} for go_fast)" if multiplier != 1.0 else ""
    logger.info("LoRA scales: %s%s", applied, note)
