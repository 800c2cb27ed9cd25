"""Which numeric path a prediction runs: plain bf16/fp32, or fp8 + torch.compile for go_fast.

The fp8 path is a separate piece of work (see the README); until it lands go_fast runs the plain path
and says so, so the option is never silently ignored.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)


def fp8_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_COMPUTE_CAPABILITY


def use_fast_path(go_fast: bool, aspect_ratio: str, device: torch.device) -> bool:
    """Whether this prediction runs the fp8 path; logs why not when go_fast was asked for."""
    if not go_fast:
        return False
    if aspect_ratio == "custom":
        logger.info("go_fast: custom sizes run in bf16, as the schema says; running the plain path")
        return False
    if not fp8_supported(device):
        logger.info(
            "go_fast: fp8 needs a GPU with compute capability >= 8.9 (this is %s); running the plain path",
            _describe(device),
        )
        return False
    logger.info("go_fast: the fp8 path is not available in this build yet; running the plain path")
    return False


def _describe(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
