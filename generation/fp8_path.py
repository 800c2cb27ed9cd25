"""go_fast's path: fp8 copies of the dev and schnell transformers, made on the GPU, compiled like the bf16 path.

Chosen design (README "go_fast"): torchao's float8 dynamic-activation + float8-weight quantization with per-row
scales on every Linear of the transformer (matmuls run as fp8 `_scaled_mm` on compute capability >= 8.9).

The copies are made from the bf16 transformers already on the GPU, never from the files and never on the CPU:
a skeleton built on the meta device takes the bf16 tensors by reference (`load_state_dict(assign=True)`), then
`quantize_` replaces each Linear weight by its fp8 version where it lies. The norms, embedders and biases stay
shared with the bf16 model, the quantisation runs at GPU speed (diffusers' `from_pretrained(quantization_config=
...)` without a device map quantises on the CPU, ~160 s a transformer, after reading 23.8 GB again), and the
extra memory is the fp8 weights only. Built BEFORE the bf16 path gets its LoRA slots, so the copies start clean.

torchao's quantize would switch inductor's coordinate-descent autotuning (and more) on for the whole process; it
is told not to (`set_inductor_config=False`) and the server's own choices are asserted again afterwards
(generation/compile_settings.py), so what every later compile does is our choice, not a side effect.

`fp8_unavailable_reason` says when this path cannot exist (no CUDA, compute capability below 8.9, no torchao);
a build that fails falls back too: go_fast requests then run the default path, with the reason in the log.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
from collections.abc import Callable

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel

from . import compile_settings
from .compiled_path import MODELS, build_compiled_path
from .execution import ExecutionPath
from .logs import stage
from .loras import GO_FAST_LORA_MULTIPLIER
from .pipelines import FluxModels
from .placement import WeightPlacement

logger = logging.getLogger(__name__)

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)
DESCRIPTION = "fp8 transformer, compiled, LoRAs in slots"


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


def make_fp8_models(plain: FluxModels, placement: WeightPlacement | None = None) -> FluxModels:
    """dev and schnell with fp8 transformers made from `plain`'s bf16 ones where they lie, sharing everything
    else (text encoders, VAE, schedulers) with `plain`. Each copy is handed to `placement` as soon as it is made,
    so one the plan keeps in host memory leaves the GPU before the next is made."""
    transformers = {}
    with stage("Making the fp8 transformers"):
        for model in MODELS:  # every plan that serves fp8 keeps the bf16 transformers on the GPU: made there
            transformers[model] = fp8_transformer(plain.transformer(model))
            if placement is not None:
                placement.register(model, "fp8", transformers[model])
    compile_settings.reassert_inductor_settings()  # in case a quantize_ elsewhere changed them for the process
    pipelines = [_with_transformer(plain.pipeline(model, "txt2img"), transformers[model]) for model in MODELS]
    return FluxModels(*pipelines, plain.device)


def fp8_transformer(bf16: FluxTransformer2DModel) -> FluxTransformer2DModel:
    """An fp8 copy of `bf16` on its device: Linear weights quantised (new tensors), everything else shared."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    if getattr(bf16, "peft_config", None):
        raise RuntimeError("make the fp8 copy before LoRA slots or adapters are added to the bf16 transformer")
    with torch.device("meta"):
        copy = FluxTransformer2DModel.from_config(bf16.config)
    copy.load_state_dict(bf16.state_dict(), strict=True, assign=True)
    copy.eval().requires_grad_(False)
    # Per-row scales for activations and weights: finer than per-tensor, so fewer outliers are clipped. torchao
    # would also switch inductor options for the whole process (set_inductor_config): ours are chosen instead.
    quantize_(copy, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))
    return copy


def try_build_fp8_path(
    plain: FluxModels,
    *,
    configure: Callable[[FluxTransformer2DModel], None] | None = None,
    backend: str = "inductor",
    placement: WeightPlacement | None = None,
) -> tuple[ExecutionPath | None, str | None]:
    """The fp8 path when this GPU can run it; otherwise (or if building it fails) None and the reason, which
    every go_fast request then logs. A broken optional path must not take the server down. `configure` is
    applied to each fp8 transformer before it is compiled (the attention backend chosen for the bf16 ones)."""
    reason = fp8_unavailable_reason(plain.device)
    if reason is not None:
        logger.info("go_fast: %s; go_fast requests will run the default path", reason)
        return None, reason
    try:
        fp8_models = make_fp8_models(plain, placement)
        for model in MODELS:
            if configure is not None:
                configure(fp8_models.transformer(model))
        park = None if placement is None else (lambda model: placement.ensure(model, "fp8"))
        return build_fp8_path(fp8_models, backend=backend, park=park), None
    except Exception as error:  # noqa: BLE001 - any failure of an optional path falls back, with its traceback
        logger.exception("go_fast: building the fp8 path failed; go_fast requests will run the default path")
        reason = f"the fp8 path could not be built at setup ({error.__class__.__name__}: {error})"
    if placement is not None:
        placement.forget("fp8")
    _release_gpu_memory()  # outside `except`: the traceback no longer holds the half-built models
    return None, reason


def build_fp8_path(
    fp8_models: FluxModels, *, backend: str = "inductor", warm_up_sizes=None, park=None
) -> ExecutionPath:
    return build_compiled_path(
        fp8_models,
        backend=backend,
        warm_up_sizes=warm_up_sizes,
        name="fp8",
        description=DESCRIPTION,
        lora_multiplier=GO_FAST_LORA_MULTIPLIER,
        park=park,
        slot_dtype=torch.bfloat16,  # LoRAs compute in bf16 beside the fp8 weights
    )


def _with_transformer(pipeline: FluxPipeline, transformer: FluxTransformer2DModel) -> FluxPipeline:
    return FluxPipeline(**{**pipeline.components, "transformer": transformer})


def _release_gpu_memory() -> None:
    """A half-built fp8 path must not keep its GPU memory: compiled modules hold reference cycles, so only a
    collection frees them before the other paths need the room."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
