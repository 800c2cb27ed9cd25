"""What a prediction did, as data: the files, the plan it ran, the path it took and why, its LoRAs and where
the time went.

The logs tell a person the same story in words; scripts (soak, bench), tests and Cog's per-prediction metrics
read it from here instead of parsing log lines, so a log line can be reworded without breaking anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .request import GenerationPlan

if TYPE_CHECKING:
    from .execution import Route

# How a LoRA file was had: already in the disk cache, downloaded (or unpacked) now, or read from a local path.
FetchOutcome = Literal["cache", "download", "local"]
# What the model needed: the adapter was read and attached (or swapped into a slot), or was there and only re-scaled.
AttachOutcome = Literal["attached", "rescaled"]
# The execution path (generation/execution.py); "+eager": that path's models with compiled code off for this size.
PathTaken = Literal["plain", "compiled", "compiled+eager", "fp8", "fp8+eager"]


@dataclass(frozen=True)
class LoraEvent:
    """One LoRA of the request."""

    role: Literal["main", "extra"]
    source: str  # as the fetcher shows it: secrets removed, data: URIs abbreviated
    scale: float  # the scale the request asked for
    fetch: FetchOutcome
    attach: AttachOutcome
    fetch_seconds: float

    def as_metric(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "source": self.source,
            "scale": self.scale,
            "fetch": self.fetch,
            "attach": self.attach,
            "fetch_s": round(self.fetch_seconds, 4),
        }


@dataclass(frozen=True)
class AppliedLoras:
    """What the LoRA stage did for one request."""

    route: Route  # the path the request runs, its LoRAs on it (a LoRA the slots refuse moves it to plain)
    events: tuple[LoraEvent, ...] = ()
    resident: int = 0  # LoRA adapters held in the whole process afterwards (never above 2)
    seconds: float = 0.0  # fetching, attaching, swapping and re-scaling; 0 when the stage had nothing to do


@dataclass(frozen=True)
class GenerationResult:
    paths: list[Path]  # the files returned, in output order (outputs dropped by the safety checker left out)
    plan: GenerationPlan
    path: PathTaken
    path_reason: str  # why that path: "go_fast is off: bf16, compiled, ...", "go_fast: custom sizes run ...", ...
    loras: AppliedLoras
    flagged: tuple[int, ...] = ()  # indices of outputs the safety checker dropped
    stage_seconds: dict[str, float] = field(default_factory=dict)  # loras, encode, denoise, safety, save

    @property
    def steps(self) -> int:
        """Denoising steps each output ran (img2img and inpainting run fewer than requested)."""
        return self.plan.steps_to_run

    def metrics(self) -> dict[str, Any]:
        """The key figures as JSON values, under the names Cog records as the prediction's metrics (README,
        "Metrics"). Names and meanings are a contract with scripts and dashboards; add, never rename."""
        return {
            "seed": self.plan.seed,
            "mode": self.plan.mode,
            "model": self.plan.model,
            "width": self.plan.width,
            "height": self.plan.height,
            "steps": self.steps,
            "steps_requested": self.plan.num_inference_steps,
            "outputs": len(self.paths),
            "outputs_flagged": len(self.flagged),
            "path": self.path,
            "path_reason": self.path_reason,
            "loras": [event.as_metric() for event in self.loras.events],
            "lora_adapters_resident": self.loras.resident,
            "stage_seconds": {name: round(seconds, 4) for name, seconds in self.stage_seconds.items()},
        }
