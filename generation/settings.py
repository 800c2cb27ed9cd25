"""What generation needs of the server's configuration, as torch objects: device, dtype and folders.

The configuration itself (variables, defaults, parsing, errors) is `serverconfig.ServerConfig`, read once
at setup; this is its view for generation, built from it, so nothing here reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from serverconfig import ServerConfig


@dataclass(frozen=True)
class Settings:
    weights_dir: Path
    device: torch.device
    dtype: torch.dtype
    output_dir: Path  # this process's outputs: a folder per prediction inside (generation/outputs.py)

    @classmethod
    def from_config(cls, config: ServerConfig) -> Settings:
        # config.dtype is a canonical torch name ("bfloat16", "float16", "float32"), checked when it was read.
        return cls(config.weights_dir, torch.device(config.device), getattr(torch, config.dtype), config.output_dir)
