"""Which numeric path a prediction runs: the plain path (bf16 on a GPU, fp32 on CPU), or go_fast's fp8 path.

go_fast is a request, not a promise the hardware can always keep: fp8 matrix multiplies need a CUDA GPU
with compute capability >= 8.9 (Ada, Hopper and later), custom sizes run bf16 as the schema says, and a
LoRA the compiled fp8 model cannot take in place runs on the plain path. Whenever go_fast was asked for
and the plain path runs, the log says why, so the option is never silently ignored.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class PathChoice:
    fast: bool
    reason: str  # why this path, for the log


def fp8_unavailable_reason(device: torch.device, capability: tuple[int, int] | None = None) -> str | None:
    """None when this device can run the fp8 path, else why not. `capability` overrides the device's own
    (tests pass one to cover GPUs they do not have)."""
    if device.type != "cuda":
        return f"fp8 needs a CUDA GPU with compute capability >= 8.9; this is {device.type}"
    major, minor = capability or torch.cuda.get_device_capability(device)
    if (major, minor) < FP8_MIN_COMPUTE_CAPABILITY:
        return f"fp8 needs compute capability >= 8.9; this GPU has {major}.{minor}"
    if importlib.util.find_spec("torchao") is None:
        return "fp8 needs the torchao package, which is not installed"
    return None


def choose_path(go_fast: bool, custom_size: bool, fast_unavailable: str | None) -> PathChoice:
    """The path for one request. `custom_size`: a text-to-image request with aspect_ratio "custom" (an input
    image sets the size itself, so "custom" means nothing there). `fast_unavailable` is why the fp8 path was
    not built at setup (None: built)."""
    if not go_fast:
        return PathChoice(False, "go_fast is off")
    if custom_size:
        return PathChoice(False, "custom sizes run in bf16, as the schema says")
    if fast_unavailable is not None:
        return PathChoice(False, fast_unavailable)
    return PathChoice(True, "fp8 transformer, compiled")


def log_choice(choice: PathChoice, go_fast: bool) -> None:
    if choice.fast:
        logger.info("go_fast: running the %s", choice.reason)
    elif go_fast:
        logger.info("go_fast: %s; running the plain path", choice.reason)
