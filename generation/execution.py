"""Execution paths: the numeric ways a request can run, and which one a request takes and why.

Three paths have one shape (`ExecutionPath`: models, the adapter manager that puts LoRAs on them, the LoRA scale
multiplier, whether its transformers run compiled, and what it is in words):

- `plain`: the bf16 models as diffusers runs them, eagerly, LoRAs attached as peft adapters
  (`lora_loader.adapters.AdapterManager`). It takes every LoRA file whole, so it is where a request goes when a
  faster path cannot take its LoRAs. Always built; on CPU it is the only path (fp32 there).
- `compiled`: the SAME bf16 modules, their repeated blocks compiled regionally with dynamic shapes and warmed
  up in setup (generation/compiled_path.py), LoRAs copied into two fixed slots (`lora_loader.hotswap`). The
  default path on a GPU. Sharing the modules costs no memory; the plain path runs them with
  `torch.compiler.set_stance("force_eager")`, so the compiled graphs are neither used nor invalidated by its
  adapters; `running()` re-arms the slots whenever compiled code is entered (docs/DESIGN.md "Execution paths").
- `fp8`: go_fast. fp8 copies of the transformers made on the GPU from the resident bf16 weights, compiled the
  same way, with their own slots (generation/fp8_path.py).

`ExecutionPaths.route` picks the path for one request and says why: go_fast selects fp8 when it was built and
the size is not custom (the schema says custom sizes run bf16); otherwise compiled when built, else plain. A
size the compiled graphs would recompile for (an image of a single token: inputs of 16x16 pixels or less)
runs the same path uncompiled. A LoRA the slots cannot take sends the request to the plain path
(`fallback`). Every choice other than the default is logged with its reason and returned in the result.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import torch

from lora_loader.adapters import LoraSpec, ResidentLora

from .pipelines import FluxModels
from .request import GenerationPlan, GenerationRequest

logger = logging.getLogger(__name__)

PathName = Literal["plain", "compiled", "fp8"]
PATCH_PIXELS = 16  # one image token covers 16x16 pixels (VAE 8x, then 2x2 patches)
# Dynamic shapes treat a dimension of size 1 as a constant (torch's 0/1 specialisation): a one-token image
# would make every compiled block recompile, for seconds to minutes, so it runs uncompiled instead.
MIN_COMPILED_IMAGE_TOKENS = 2


class LoraAdapters(Protocol):
    """What a path's adapter manager does (AdapterManager and HotswapAdapterManager both)."""

    @property
    def resident(self) -> tuple[ResidentLora, ...]: ...

    def apply(self, model: str, main: LoraSpec | None, extra: LoraSpec | None, *, multiplier: float = 1.0) -> None: ...

    def empty(self) -> None: ...

    def arm(self) -> None: ...


@dataclass
class ExecutionPath:
    name: PathName
    models: FluxModels
    adapters: LoraAdapters
    lora_multiplier: float  # LoRA scales are multiplied by this on this path (docs/DESIGN.md "LoRA scales")
    compiled: bool  # its transformers' blocks are compiled (else they must run with compiled code off)
    description: str  # what it is, for logs and results: "bf16, compiled, LoRAs in slots"
    park: Callable[[str], float] | None = field(default=None, repr=False)  # see `prepare_model`
    setup_seconds: dict[str, float] = field(default_factory=dict)  # building it: "first_call", "other_sizes"

    @contextlib.contextmanager
    def running(self, eager: bool = False) -> Iterator[None]:
        """Run this path's models: compiled code on or off. The plain path always turns it off: its modules
        may be the compiled path's, whose graphs must neither run its adapters nor be replaced for them."""
        if self.compiled and not eager:
            self.adapters.arm()  # the slots as the graphs saw them, whatever ran on these modules since
            yield
            return
        with torch.compiler.set_stance("force_eager"):
            yield

    def prepare_model(self, model: str) -> float:
        """Make `model`'s weights ready on the device (a path may keep one model's weights in host memory,
        generation/residency.py); the seconds it took, 0 when nothing moved."""
        return self.park(model) if self.park is not None else 0.0


@dataclass(frozen=True)
class Route:
    """The path one request runs, whether uncompiled, and why (for the log and the result)."""

    path: ExecutionPath
    eager: bool
    reason: str

    @property
    def name(self) -> str:
        """What the result reports: the path's name, `+eager` when its compiled code was off for this size."""
        return f"{self.path.name}+eager" if self.eager and self.path.compiled else self.path.name


class ExecutionPaths:
    """The paths built at setup, and why each missing one is missing (the reason a request that wanted it
    reports)."""

    def __init__(
        self,
        plain: ExecutionPath,
        compiled: ExecutionPath | None = None,
        fp8: ExecutionPath | None = None,
        unavailable: dict[str, str] | None = None,
    ):
        self.plain = plain
        self.compiled = compiled
        self.fp8 = fp8
        self.unavailable = dict(unavailable or {})
        for name, path in (("compiled", compiled), ("fp8", fp8)):
            if path is None:
                self.unavailable.setdefault(name, f"the {name} path was not built")

    @property
    def all(self) -> tuple[ExecutionPath, ...]:
        return tuple(path for path in (self.plain, self.compiled, self.fp8) if path is not None)

    @property
    def default(self) -> ExecutionPath:
        return self.compiled or self.plain

    def route(self, request: GenerationRequest, plan: GenerationPlan) -> Route:
        path, reason = self._choose(request)
        if path.compiled and image_tokens(plan.width, plan.height) < MIN_COMPILED_IMAGE_TOKENS:
            reason += (
                f"; {plan.width}x{plan.height} is a single image token, which the compiled graphs would "
                "recompile for: running it uncompiled"
            )
            return Route(path, True, reason)
        return Route(path, False, reason)

    def _choose(self, request: GenerationRequest) -> tuple[ExecutionPath, str]:
        default = self.default
        if not request.go_fast:
            return default, f"go_fast is off: {default.description}"
        if request.mode == "txt2img" and request.aspect_ratio == "custom":
            return default, f"go_fast: custom sizes run in bf16, as the schema says ({default.description})"
        if self.fp8 is None:
            return default, f"go_fast: {self.unavailable['fp8']}; running {default.description}"
        return self.fp8, f"go_fast: {self.fp8.description}"

    def fallback(self, route: Route, why: str) -> Route:
        """The plain path, for a request `route`'s path cannot run (`why`: the LoRA that its slots refuse)."""
        return replace(route, path=self.plain, eager=False, reason=f"{why}; running {self.plain.description}")


def image_tokens(width: int, height: int) -> int:
    return (width // PATCH_PIXELS) * (height // PATCH_PIXELS)


def log_route(route: Route, default: ExecutionPath, go_fast: bool) -> None:
    """One line whenever a request does not simply run the default path: go_fast asked for (granted or not, the
    user learns which path ran), a fallback, or a size run uncompiled."""
    if go_fast or route.path is not default or route.eager:
        logger.info("Execution path %s: %s", route.name, route.reason)
