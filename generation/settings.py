"""Process-wide configuration from the environment (the names are the contract: docs/DESIGN.md, "Configuration")."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserInputError

DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


@dataclass(frozen=True)
class Settings:
    weights_dir: Path
    device: torch.device
    dtype: torch.dtype
    output_dir: Path  # each prediction's files; emptied at the start of the next prediction

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        has_gpu = torch.cuda.is_available()
        device = torch.device(environ.get("FLUX_DEVICE") or ("cuda" if has_gpu else "cpu"))
        dtype_name = environ.get("FLUX_DTYPE") or ("bfloat16" if device.type == "cuda" else "float32")
        if dtype_name not in DTYPES:
            raise UserInputError(f"FLUX_DTYPE={dtype_name!r} is not supported; use bfloat16, float16 or float32.")
        return cls(
            weights_dir=Path(environ.get("WEIGHTS_DIR") or "./model-cache").resolve(),
            device=device,
            dtype=DTYPES[dtype_name],
            output_dir=Path(tempfile.gettempdir()) / f"flux-outputs-{os.getpid()}",
        )
