"""Where the transformers' weights live while the server runs: the residency plan (generation/residency.py)
carried out.

At setup the plan is made from the checkpoint headers before anything is loaded (so a 48 GB card never tries to
hold both bf16 transformers), logged, and then applied: a transformer the plan keeps in host memory waits there
pinned (`residency.ParkedModule`), and `ensure(model, precision)` copies it onto the GPU when a request needs it,
first sending the other model's copy of that precision back to host memory (one GPU buffer per precision), and
logs the swap with its measured and planned time. On a CPU, or a GPU with room for everything (an H200), there is
no plan to carry out and `ensure` costs nothing. What a request waited is returned (the result's `weights_swap`
stage), not only logged.

Precision "bf16" is the transformers the plain and compiled paths share; "fp8" is go_fast's copies. On an 80 GB
card the plan keeps both bf16 transformers resident, so bf16 requests never wait, and one fp8 buffer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch

from . import residency
from .residency import ParkedModule, ResidencyPlan

logger = logging.getLogger(__name__)

Precision = Literal["bf16", "fp8"]
# What the CUDA context, cuBLAS workspaces and the allocator's slack keep from the card: an 80 GB H100 reports
# 79.1 GiB and leaves about 78.6 allocatable (shared/reference/gpu-plan.md).
CONTEXT_RESERVE_BYTES = 512 * 2**20


class WeightPlacement:
    def __init__(self, plan: ResidencyPlan | None, device: torch.device):
        self.plan = plan
        self.device = device
        self._modules: dict[tuple[str, Precision], ParkedModule] = {}

    @classmethod
    def for_device(cls, weights_dir: Path, device: torch.device, fp8_wanted: bool) -> WeightPlacement:
        """The plan for this GPU from the checkpoints' headers (nothing loaded yet), logged line by line; on a CPU
        no plan (everything stays where it is loaded)."""
        if device.type != "cuda":
            return cls(None, device)
        components = residency.Components.from_weights(weights_dir)
        total = torch.cuda.get_device_properties(device).total_memory
        copy_rate = residency.measure_copy_rate(device)
        plan = residency.plan_residency(components, total - CONTEXT_RESERVE_BYTES, fp8_wanted, copy_rate=copy_rate)
        for line in plan.describe():
            logger.info("%s", line)
        return cls(plan, device)

    @property
    def fp8_reason(self) -> str | None:
        """Why the plan serves no fp8 path (too little GPU memory), else None."""
        return None if self.plan is None or self.plan.fp8_served else self.plan.fp8_reason

    def on_host(self, model: str, precision: Precision) -> bool:
        """Whether the plan keeps `model`'s transformer of `precision` in host memory between requests."""
        return self.plan is not None and self.plan.where(f"{model} {precision}") == "host"

    def register(self, model: str, precision: Precision, transformer: torch.nn.Module) -> None:
        """Take charge of a transformer; one the plan keeps in host memory goes there now (freeing its GPU
        memory, or pinning it when it was loaded on the CPU)."""
        if not self.on_host(model, precision):
            return
        # Base weights never change (LoRAs live in their own layers), so after the first park only the LoRA
        # layers are copied back to host memory: a swap costs the copy onto the GPU, as the plan counts it.
        parked = ParkedModule(transformer, self.device, read_only=lambda name: ".lora_" not in name)
        parked.park()
        self._modules[(model, precision)] = parked

    def forget(self, precision: Precision) -> None:
        """Let go of every transformer of `precision` (a path whose build failed: its host copies are freed)."""
        for key in [key for key in self._modules if key[1] == precision]:
            del self._modules[key]

    def ensure(self, model: str, precision: Precision) -> float:
        """`model`'s transformer of `precision` on the GPU, the other model's sent back first; seconds spent."""
        wanted = self._modules.get((model, precision))
        if wanted is None or not wanted.parked:
            return 0.0
        seconds = 0.0
        for (other, other_precision), parked in self._modules.items():
            if other_precision == precision and other != model and not parked.parked:
                seconds += parked.park().seconds
        transfer = wanted.unpark()
        planned = self.plan.swap_for(model, go_fast=precision == "fp8") if self.plan else None
        logger.info("%s", residency.switch_line(f"FLUX.1 [{model}] {precision}", transfer, planned))
        return seconds + transfer.seconds
