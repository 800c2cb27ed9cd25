"""The attention backend the transformers use: measured at setup among those this device has, or forced.

FLUX spends most of a step in attention over [batch, text + image tokens, 24 heads, 128]. diffusers' attention
dispatcher (`diffusers.models.attention_dispatch`) can run it through several kernels: torch's SDPA with its own
pick (`native`: on Hopper flash before cuDNN), SDPA pinned to one kernel (`_native_cudnn`, `_native_flash`,
`_native_efficient`, `_native_math`), or FlashAttention 2/3 when their packages are installed (`flash`,
`_flash_3`). Which is fastest depends on the GPU, the shape and the library versions, so it is measured
(docs/DESIGN.md, "Speed"; gpu-plan.md, "Attention"), never assumed:

    choice = choose_attention_backend("cuda", torch.bfloat16, seq_len=4608, heads=24, head_dim=128, repeats=20)
    apply_attention_backend(transformer, choice)   # + one log line with every candidate's time

Every candidate runs the same q/k/v; its output is compared with a float32 math-SDPA reference computed from
the same inputs, and one that differs by more than `TOLERANCE[dtype]` (relative to the reference's largest
value) is refused, however fast. A candidate that cannot run here (package missing, dtype or device it does not
support, no kernel for the shape) is skipped with the reason kept. Timing: CUDA events on CUDA, perf_counter
elsewhere; warm-up calls first, then the median of `repeats` calls. Everything measured is returned as data
(`AttentionChoice`), so a log line can be reworded without losing anything.

`FLUX_ATTENTION_BACKEND` (ServerConfig.attention_backend) forces one backend by its diffusers name; it is still
run once and checked, and one that cannot run or gives wrong numbers fails setup (`resolve_attention_backend`).
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

# FLUX.1's attention: 24 heads of 128; 512 T5 tokens + 4096 image tokens at 1 MP (1024x1024 / 16²).
FLUX_HEADS = 24
FLUX_HEAD_DIM = 128
FLUX_SEQ_LEN_1MP = 512 + 4096

NATIVE = "native"
# Tried on CUDA, in this order (the first of equally fast ones wins, so torch's own pick is preferred).
CUDA_CANDIDATES = (NATIVE, "_native_cudnn", "_native_flash", "_native_efficient")
CUDA_PACKAGE_CANDIDATES = ("_flash_3", "flash")  # FlashAttention 3 / 2: only when their packages import
CPU_CANDIDATES = (NATIVE, "_native_math")

# Largest |output - reference| allowed, as a fraction of the reference's largest |value|. The reference is math
# SDPA in float32 on the same inputs. bf16 keeps 8 mantissa bits (eps 7.8e-3) and flash kernels also round the
# softmax weights to bf16 before the second matmul, so a correct kernel lands within a few eps; fp16 has 3 more
# bits. float32 allows TF32 matmuls (10 bits, ~1e-3), which a caller may have switched on. A kernel with a real
# bug (wrong scale, wrong layout, garbage) is off by far more than any of these.
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 2e-3}
WARMUP_CALLS = 3
_REFERENCE_SCORES = 2**27  # float32 scores the reference holds at once (512 MB)
_REASON_CHARS = 80  # a skipped candidate's reason, in the log line (the data keeps all of it)


class AttentionBackendUnavailable(RuntimeError):
    """FLUX_ATTENTION_BACKEND names a backend that cannot run on this device or gives wrong numbers."""


@dataclass(frozen=True)
class CandidateResult:
    backend: str
    median_seconds: float | None  # None: not timed (skipped)
    error: float | None  # max |output - reference| / max |reference|; None: it never produced an output
    skipped: str | None = None  # why it was not timed, or was refused after its output was checked

    @property
    def usable(self) -> bool:
        return self.skipped is None


@dataclass(frozen=True)
class AttentionChoice:
    backend: str  # a diffusers AttentionBackendName value
    forced: bool  # FLUX_ATTENTION_BACKEND named it (only it was run)
    candidates: tuple[CandidateResult, ...]  # in the order tried
    device: str
    dtype: str
    shape: tuple[int, int, int, int]  # q/k/v: batch, sequence, heads, head dim
    tolerance: float
    repeats: int

    def candidate(self, backend: str) -> CandidateResult:
        return next(result for result in self.candidates if result.backend == backend)

    @property
    def median_seconds(self) -> float:
        seconds = self.candidate(self.backend).median_seconds
        assert seconds is not None  # a chosen backend was timed
        return seconds

    def log_line(self) -> str:
        """`Attention backend: _native_cudnn (1.23 ms; native 1.45 ms, flash skipped: ...) at 1x4608x24x128
        bfloat16 on cuda, fastest measured`."""
        others = []
        for result in self.candidates:
            if result.backend == self.backend:
                continue
            if result.usable:
                others.append(f"{result.backend} {_ms(result.median_seconds)}")
            else:
                reason = result.skipped or ""
                reason = reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 1] + "…"
                others.append(f"{result.backend} skipped: {reason}")
        how = "forced by FLUX_ATTENTION_BACKEND" if self.forced else "fastest measured"
        details = _ms(self.median_seconds) + (f"; {', '.join(others)}" if others else "")
        shape = "x".join(str(n) for n in self.shape)
        return f"Attention backend: {self.backend} ({details}) at {shape} {self.dtype} on {self.device}, {how}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_candidates(device: torch.device | str) -> tuple[str, ...]:
    """The backends worth trying on this kind of device (FlashAttention ones only when their package imports)."""
    device = torch.device(device)
    if device.type == "cuda":
        from diffusers.models import attention_dispatch as dispatch

        extra = {"_flash_3": dispatch._CAN_USE_FLASH_ATTN_3, "flash": dispatch._CAN_USE_FLASH_ATTN}
        return CUDA_CANDIDATES + tuple(name for name in CUDA_PACKAGE_CANDIDATES if extra[name])
    if device.type == "cpu":
        return CPU_CANDIDATES
    return (NATIVE,)


@torch.inference_mode()
def choose_attention_backend(
    device: torch.device | str,
    dtype: torch.dtype | str,
    candidates: Iterable[str] | None = None,
    *,
    seq_len: int,
    heads: int,
    head_dim: int,
    repeats: int,
    batch: int = 1,
    forced: bool = False,
) -> AttentionChoice:
    """Time every candidate on q/k/v of [batch, seq_len, heads, head_dim] and return the fastest whose output
    matches the reference; raises RuntimeError when none can run (not even `native`: something is broken)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    device, dtype = torch.device(device), _dtype(dtype)
    names = list(default_candidates(device) if candidates is None else candidates)
    valid = {backend.value for backend in AttentionBackendName}
    unknown = [name for name in names if name not in valid]
    if unknown or not names or repeats < 1:
        raise ValueError(f"candidates must be diffusers attention backends (got {unknown or names}), repeats >= 1")
    tolerance = TOLERANCE.get(dtype, TOLERANCE[torch.float32])
    shape = (batch, seq_len, heads, head_dim)
    generator = torch.Generator(device=device).manual_seed(0)
    query, key, value = (torch.randn(shape, generator=generator, device=device, dtype=dtype) for _ in range(3))
    reference = _reference(query, key, value)
    results = [_measure(name, query, key, value, reference, tolerance, repeats) for name in names]
    usable = [result for result in results if result.usable]
    if not usable:
        reasons = "; ".join(f"{result.backend}: {result.skipped}" for result in results)
        raise RuntimeError(f"no attention backend can run on {device} in {_name(dtype)} ({reasons})")
    fastest = min(usable, key=lambda result: result.median_seconds)  # the first of equals: the order tried
    return AttentionChoice(
        backend=fastest.backend,
        forced=forced,
        candidates=tuple(results),
        device=str(device),
        dtype=_name(dtype),
        shape=shape,
        tolerance=tolerance,
        repeats=repeats,
    )


def resolve_attention_backend(
    setting: str,
    device: torch.device | str,
    dtype: torch.dtype | str,
    *,
    seq_len: int,
    heads: int,
    head_dim: int,
    repeats: int,
) -> AttentionChoice:
    """FLUX_ATTENTION_BACKEND's value (ServerConfig.attention_backend): `auto` measures the device's candidates;
    a backend name runs only that one, checked the same way, and raises AttentionBackendUnavailable (with the
    reason) when it cannot run here or gives wrong numbers: an operator who forces a backend is told, not
    silently given another."""
    shape = {"seq_len": seq_len, "heads": heads, "head_dim": head_dim, "repeats": repeats}
    if setting == "auto":
        return choose_attention_backend(device, dtype, **shape)
    try:
        choice = choose_attention_backend(device, dtype, (setting,), forced=True, **shape)
    except RuntimeError as error:
        raise AttentionBackendUnavailable(f"FLUX_ATTENTION_BACKEND={setting!r} cannot be used: {error}") from None
    return choice


def apply_attention_backend(transformer: torch.nn.Module, choice: AttentionChoice, *, name: str | None = None) -> None:
    """Set the chosen backend on every attention processor of `transformer` (diffusers' `set_attention_backend`)
    and log the measurement in one line (`name`, such as dev or schnell, says which transformer).

    diffusers also makes it the process-wide active backend, which every diffusers attention call without a
    backend of its own then uses (a second transformer not set explicitly included)."""
    with _without_experimental_notice():
        transformer.set_attention_backend(choice.backend)
    line = choice.log_line()
    logger.info(line.replace("Attention backend:", f"Attention backend ({name}):", 1) if name else line)


def _measure(
    name: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    reference: torch.Tensor,
    tolerance: float,
    repeats: int,
) -> CandidateResult:
    from diffusers.models import attention_dispatch as dispatch

    backend = dispatch.AttentionBackendName(name)

    def call() -> torch.Tensor:
        return dispatch.dispatch_attention_fn(query, key, value, backend=backend)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # torch says why each SDPA kernel declined; kept as part of the reason
        try:
            dispatch._check_attention_backend_requirements(backend)  # its package is installed and new enough
            # The backend's own checks (dtype, device, shape), which diffusers runs only with
            # DIFFUSERS_ATTN_CHECKS set; without them a wrong dtype fails later with a vaguer message.
            arguments = {"query": query, "key": key, "value": value, "attn_mask": None, "is_causal": False}
            for check in dispatch._AttentionBackendRegistry._constraints.get(backend, []):
                check(**arguments)
            dispatch._maybe_download_kernel_for_backend(backend)  # hub kernels only (never in the defaults)
            output = call()
        except Exception as error:
            return CandidateResult(name, None, None, _reason(error, caught))
    error = _relative_error(output, reference)
    del output
    if not error <= tolerance:  # also refuses NaN
        return CandidateResult(name, None, error, f"wrong output: error {error:.2e} > tolerance {tolerance:.0e}")
    return CandidateResult(name, _median_seconds(call, query.device, repeats), error)


def _reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Math SDPA in float32: the plain formula, as exact as this device computes it. A few heads at a time, so
    the full score matrix (24 heads x 8612² at 1440x1440: 7 GB) never exists at once."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch, sequence, heads, _ = query.shape
    per_chunk = max(1, _REFERENCE_SCORES // (batch * sequence * sequence))
    q, k, v = (x.float().permute(0, 2, 1, 3) for x in (query, key, value))
    chunks = []
    with sdpa_kernel(SDPBackend.MATH):
        for first in range(0, heads, per_chunk):
            part = slice(first, first + per_chunk)
            chunks.append(torch.nn.functional.scaled_dot_product_attention(q[:, part], k[:, part], v[:, part]))
    return torch.cat(chunks, dim=1).permute(0, 2, 1, 3)


def _relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    if output.shape != reference.shape:
        return float("inf")
    scale = reference.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    return float(((output.float() - reference).abs().max() / scale).item())


def _median_seconds(call: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    for _ in range(WARMUP_CALLS):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            call()
            end.record()
        torch.cuda.synchronize(device)
        seconds = [start.elapsed_time(end) / 1000 for start, end in events]
    else:
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def _reason(error: Exception, caught: list[warnings.WarningMessage]) -> str:
    reason = f"{error.__class__.__name__}: {str(error).strip() or 'no message'}"
    notes = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
    return "; ".join([reason, *dict.fromkeys(notes)])  # torch's why-not notes, each once


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"{dtype!r} is not a torch dtype")
    return resolved


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.2f} ms"


class _ExperimentalNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Attention backends are an experimental feature")


@contextmanager
def _without_experimental_notice():
    """diffusers warns on every set_attention_backend that the API is experimental: a note to developers (the
    version is pinned), not something the reader of a prediction's setup logs can act on."""
    source = logging.getLogger("diffusers.models.modeling_utils")
    notice = _ExperimentalNotice()
    source.addFilter(notice)
    try:
        yield
    finally:
        source.removeFilter(notice)
