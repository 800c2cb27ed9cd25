"""The compiled bf16 path: FLUX's repeated blocks compiled regionally with dynamic shapes, LoRAs in slots.

Built once in setup over the plain path's own modules (no second copy of the weights): each transformer gets its
two LoRA slots first (`lora_loader.hotswap`: a compiled graph must see the slots it will run), then diffusers'
`compile_repeated_blocks(fullgraph=True, dynamic=True)` compiles one double and one single block that every
block of that kind reuses, for every size: minutes of compiling become seconds, and a new size, mode, LoRA,
scale or model never recompiles (tests/test_compiled_path.py runs such a sequence with `error_on_recompile`).
A warm-up renders each model once per named size, so no request pays the first call's compile or the kernels'
first launch. generation/fp8_path.py builds go_fast's path the same way over fp8 transformers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import torch

from lora_loader.hotswap import DEFAULT_MAX_RANK, HotswapAdapterManager

from . import sizes
from .execution import ExecutionPath
from .logs import stage
from .pipelines import FluxModels
from .request import MAX_SEQUENCE_LENGTH

logger = logging.getLogger(__name__)

MODELS = ("dev", "schnell")
WARMUP_STEPS = 1


def named_sizes() -> list[tuple[int, int]]:
    """Every (width, height) a named aspect ratio gives, at both megapixel settings."""
    return [sizes.size_for_aspect_ratio(ratio, mp) for ratio in sizes.ASPECT_RATIOS for mp in sizes.MEGAPIXELS]


def build_compiled_path(
    models: FluxModels,
    *,
    backend: str = "inductor",
    max_rank: int = DEFAULT_MAX_RANK,
    warm_up_sizes: Iterable[tuple[int, int]] | None = None,
    name: str = "compiled",
    description: str = "bf16, compiled, LoRAs in slots",
    lora_multiplier: float = 1.0,
    park: Callable[[str], float] | None = None,
    slot_dtype: torch.dtype | None = None,
) -> ExecutionPath:
    """Slots, compile, warm-up on `models`' transformers; the path over them. `backend` is torch.compile's
    (tests use "eager": the guards, and so recompiles, are the same for every backend). `park` brings a model's
    weights onto the GPU when the residency plan keeps them in host memory (generation/placement.py);
    `slot_dtype` is the LoRA slots' dtype, by default the transformer's (fp8 transformers pass bf16)."""
    adapters = HotswapAdapterManager(models)
    for model in MODELS:
        if park is not None:
            park(model)  # on the GPU while its slots are made: they are made where its weights are
        adapters.prepare((model,), max_rank=max_rank, dtype=slot_dtype)
        models.transformer(model).compile_repeated_blocks(fullgraph=True, dynamic=True, backend=backend)
    path = ExecutionPath(name, models, adapters, lora_multiplier, True, description, park)  # type: ignore[arg-type]
    with stage(f"Warming up the {name} path"):
        path.setup_seconds.update(warm_up(path, named_sizes() if warm_up_sizes is None else list(warm_up_sizes)))
    return path


@torch.inference_mode()
def warm_up(
    path: ExecutionPath, sizes_to_run: list[tuple[int, int]], models: Iterable[str] = MODELS
) -> dict[str, float]:
    """Render each model once per size (latents only, WARMUP_STEPS steps): the first call compiles (dynamic
    shapes: once for all sizes), the others launch each size's kernels once. Returns the seconds of the first
    calls (compiling, or loading compiled code from the cache) and of the other sizes, summed over the models."""
    seconds = {"first_call": 0.0, "other_sizes": 0.0}
    for model in models:
        path.prepare_model(model)
        embeddings = path.models.encode_prompt(model, "warm-up", MAX_SEQUENCE_LENGTH[model])
        pipe = path.models.pipeline(model, "txt2img")
        with path.running():
            for index, (width, height) in enumerate(sizes_to_run):
                start = time.perf_counter()
                pipe(
                    prompt_embeds=embeddings.prompt_embeds,
                    pooled_prompt_embeds=embeddings.pooled_prompt_embeds,
                    width=width,
                    height=height,
                    num_inference_steps=WARMUP_STEPS,
                    output_type="latent",
                )
                seconds["first_call" if index == 0 else "other_sizes"] += time.perf_counter() - start
        logger.info("%s path: FLUX.1 [%s] warmed up at %d size(s)", path.name, model, len(sizes_to_run))
    return seconds
