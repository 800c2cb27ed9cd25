"""go_fast: fp8 copies of the dev and schnell transformers, compiled and warmed up in setup().

Chosen design (see README "go_fast"): torchao's float8 dynamic-activation + float8-weight quantization
with per-row scales on every Linear of the transformer (matmuls run as fp8 `_scaled_mm` on compute
capability >= 8.9), then regional `torch.compile` of the repeated transformer blocks with dynamic shapes,
so one compilation covers every output size. LoRAs go into two fixed adapter slots prepared before
compilation and are swapped in place (hotswap), so changing LoRAs never recompiles. The text encoders,
VAE and safety models are shared with the plain path; only the two transformers are extra.

Everything here runs only on a GPU that supports fp8; `generation.precision` decides, and setup falls
back to the plain path (with the reason in the logs) if building or warming this path fails.
"""

from __future__ import annotations

import copy
import gc
import logging
from pathlib import Path

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel, TorchAoConfig
from safetensors import safe_open

from . import precision, sizes
from .logs import stage
from .pipelines import FluxModels
from .request import MAX_SEQUENCE_LENGTH

logger = logging.getLogger(__name__)

MAX_LORA_RANK = 128  # hotswap pads every LoRA to this rank; larger ones run on the plain path
WARMUP_STEPS = 2
GIB = 2**30
HEADROOM_BYTES = 8 * GIB  # activations at 1440x1440 plus the VAE decode


class FastPath:
    def __init__(self, models: FluxModels, adapters):
        self.models = models
        self.adapters = adapters  # lora_loader.hotswap.HotswapAdapterManager

    @classmethod
    def try_build(
        cls, plain: FluxModels, sources: dict[str, Path | FluxTransformer2DModel]
    ) -> tuple[FastPath | None, str | None]:
        """The fp8 path when this GPU can run it; otherwise (or if building it fails) None and the reason,
        which every go_fast request then logs. A broken optional path must not take the server down."""
        reason = precision.fp8_unavailable_reason(plain.device)
        if reason is not None:
            logger.info("go_fast: %s; go_fast requests will run the plain path", reason)
            return None, reason
        try:
            return cls.build(plain, sources), None
        except Exception as error:
            logger.exception("go_fast: building the fp8 path failed; go_fast requests will run the plain path")
            _release_gpu_memory()
            return None, f"the fp8 path could not be built at setup ({error.__class__.__name__}: {error})"

    @classmethod
    def build(cls, plain: FluxModels, sources: dict[str, Path | FluxTransformer2DModel]) -> FastPath:
        """`sources` maps dev/schnell to the weights folder to load the fp8 transformer from (production:
        no transient bf16 copy in GPU memory) or to a bf16 transformer to quantize a copy of (benchmarks)."""
        from lora_loader.hotswap import HotswapAdapterManager

        with stage("Building the fp8 transformers"):
            _check_memory(plain.device, sources)
            transformers = {model: _fp8_transformer(source, plain.device) for model, source in sources.items()}
        models = FluxModels(
            *(_with_transformer(plain.pipeline(model, "txt2img"), transformers[model]) for model in ("dev", "schnell")),
            plain.device,
        )
        adapters = HotswapAdapterManager(models)
        adapters.prepare(("dev", "schnell"), max_rank=MAX_LORA_RANK)  # slots exist before compiling
        for model in ("dev", "schnell"):
            models.transformer(model).compile_repeated_blocks(fullgraph=True, dynamic=True)
        with stage("Warming up the compiled fp8 transformers"):
            _warm_up(models)
        return cls(models, adapters)


def _fp8_config():
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    # Per-row scales for activations and weights: finer than per-tensor, so fewer outliers are clipped.
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def _fp8_transformer(source: Path | FluxTransformer2DModel, device: torch.device) -> FluxTransformer2DModel:
    if isinstance(source, FluxTransformer2DModel):
        from torchao.quantization import quantize_

        transformer = copy.deepcopy(source)
        quantize_(transformer, _fp8_config())
        return transformer
    transformer = FluxTransformer2DModel.from_pretrained(
        source,
        subfolder="transformer",
        quantization_config=TorchAoConfig(_fp8_config()),
        dtype=torch.bfloat16,
        local_files_only=True,
    )
    return transformer.to(device)


def _with_transformer(pipeline: FluxPipeline, transformer: FluxTransformer2DModel) -> FluxPipeline:
    return FluxPipeline(**{**pipeline.components, "transformer": transformer})


def _check_memory(device: torch.device, sources: dict[str, Path | FluxTransformer2DModel]) -> None:
    """Refuse early (and fall back) rather than die of OOM in the middle of setup."""
    fp8 = sum(_bf16_bytes(source) // 2 for source in sources.values())
    slots = sum(_slot_bytes(source) for source in sources.values())
    needed = fp8 + slots + HEADROOM_BYTES
    free, _ = torch.cuda.mem_get_info(device)
    if free < needed:
        raise MemoryError(
            f"the fp8 path needs about {needed / GIB:.0f} GiB of GPU memory (fp8 transformers {fp8 / GIB:.0f}, "
            f"LoRA slots {slots / GIB:.0f}, activations {HEADROOM_BYTES / GIB:.0f}) and {free / GIB:.0f} GiB are free"
        )


def _bf16_bytes(source: Path | FluxTransformer2DModel) -> int:
    if isinstance(source, FluxTransformer2DModel):
        return 2 * sum(p.numel() for p in source.parameters())
    return sum(f.stat().st_size for f in _transformer_files(source))


def _slot_bytes(source: Path | FluxTransformer2DModel) -> int:
    """The two bf16 LoRA slots of rank MAX_LORA_RANK that hotswap adds to every Linear layer (an upper bound:
    it counts every Linear, a few of which get no slot)."""
    return 2 * 2 * MAX_LORA_RANK * sum(rows + columns for rows, columns in _linear_shapes(source))


def _linear_shapes(source: Path | FluxTransformer2DModel) -> list[tuple[int, int]]:
    if isinstance(source, FluxTransformer2DModel):
        return [tuple(m.weight.shape) for m in source.modules() if isinstance(m, torch.nn.Linear)]
    shapes = []
    for file in _transformer_files(source):
        with safe_open(file, framework="pt") as tensors:  # reads the header only
            for key in tensors.keys():
                shape = tensors.get_slice(key).get_shape()
                if key.endswith(".weight") and len(shape) == 2:
                    shapes.append((shape[0], shape[1]))
    return shapes


def _transformer_files(source: Path) -> list[Path]:
    return sorted((source / "transformer").glob("*.safetensors"))


def _release_gpu_memory() -> None:
    """A half-built fp8 path must not keep its GPU memory: compiled modules hold reference cycles, so only a
    collection frees them before the plain path needs the room."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.inference_mode()
def _warm_up(models: FluxModels) -> None:
    """Run every named size at both megapixel settings once per model, so no prediction pays the first
    call's compilation or kernel autotuning (dynamic shapes keep this to one compilation per model)."""
    for model in ("dev", "schnell"):
        embeddings = models.encode_prompt(model, "warm-up", MAX_SEQUENCE_LENGTH[model])
        pipe = models.pipeline(model, "txt2img")
        for ratio in sizes.ASPECT_RATIOS:
            for megapixels in sizes.MEGAPIXELS:
                width, height = sizes.size_for_aspect_ratio(ratio, megapixels)
                pipe(
                    prompt_embeds=embeddings.prompt_embeds,
                    pooled_prompt_embeds=embeddings.pooled_prompt_embeds,
                    width=width,
                    height=height,
                    num_inference_steps=WARMUP_STEPS,
                    output_type="latent",
                )
        logger.info("go_fast: %s warmed up at %d sizes", model, 2 * len(sizes.ASPECT_RATIOS))
