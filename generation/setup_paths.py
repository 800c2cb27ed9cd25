"""The execution paths a device can run, built in setup, in the one order that works.

1. The plain path over the loaded models (always).
2. Whether to compile (`FLUX_COMPILE`: on a GPU by default; on a CPU compiling FLUX.1 takes minutes), the
   compile cache folder (`FLUX_COMPILE_CACHE_DIR`: a restarted server loads what an earlier one compiled) and the
   inductor settings, chosen explicitly (generation/compile_settings.py).
3. The attention backend, measured on this device (`FLUX_ATTENTION_BACKEND` forces one), set on every
   transformer before anything is compiled (generation/attention.py).
4. go_fast's fp8 transformers, made on the GPU from the clean bf16 ones, before those get LoRA slots.
5. The compiled bf16 path over the plain path's modules, then the fp8 path: slots, compile, warm-up.
6. The compile cache saved, so the next start skips step 5's compiling.

Each step's seconds are recorded (`times`: the cold/warm start split the README reports).
"""

from __future__ import annotations

import logging

from lora_loader.adapters import AdapterManager
from serverconfig import ServerConfig

from . import attention, compile_settings
from .compiled_path import MODELS, build_compiled_path
from .execution import ExecutionPath, ExecutionPaths
from .fp8_path import fp8_unavailable_reason, try_build_fp8_path
from .logs import StageTimes
from .pipelines import FluxModels
from .placement import WeightPlacement

logger = logging.getLogger(__name__)

# One attention call of FLUX.1 at 1024x1024. On a CPU (only with FLUX_COMPILE=on) a call that size takes seconds
# per backend, so a short sequence stands in there.
FLUX_HEADS = {"heads": attention.FLUX_HEADS, "head_dim": attention.FLUX_HEAD_DIM}
FLUX_1MP_ATTENTION = {"seq_len": attention.FLUX_SEQ_LEN_1MP, **FLUX_HEADS, "repeats": 10}
CPU_ATTENTION = {"seq_len": 256, **FLUX_HEADS, "repeats": 3}


def plain_path(models: FluxModels, placement: WeightPlacement | None = None) -> ExecutionPath:
    dtype = str(models.transformer("dev").dtype).removeprefix("torch.")
    park = _parker(placement, "bf16")
    description = f"{dtype}, uncompiled, LoRAs as adapters"
    return ExecutionPath("plain", models, AdapterManager(models), 1.0, False, description, park)


def _parker(placement: WeightPlacement | None, precision: str):
    return None if placement is None else (lambda model: placement.ensure(model, precision))


def build_paths(
    models: FluxModels, config: ServerConfig, times: StageTimes, placement: WeightPlacement | None = None
) -> ExecutionPaths:
    if placement is not None:
        for model in MODELS:
            placement.register(model, "bf16", models.transformer(model))
    plain = plain_path(models, placement)
    fp8_reason = fp8_unavailable_reason(models.device) or (placement and placement.fp8_reason)
    compile_on, why = compile_settings.compile_enabled(config.compile, models.device)
    logger.info("Compiling: %s", why)
    if not compile_on:
        return ExecutionPaths(plain, unavailable={"compiled": why, "fp8": fp8_reason or f"go_fast is compiled; {why}"})
    compile_settings.configure_compile_cache(config.compile_cache_dir)
    with times.stage("compile_cache_load", "Loading the compile cache"):
        logger.info("%s", compile_settings.load_cache_artifacts(config.compile_cache_dir).log_line())
    compile_settings.choose_inductor_settings()
    with times.stage("attention", "Choosing the attention backend"):
        dtype = models.transformer("dev").dtype
        shape = FLUX_1MP_ATTENTION if models.device.type == "cuda" else CPU_ATTENTION
        choice = attention.resolve_attention_backend(config.attention_backend, models.device, dtype, **shape)
        for model in MODELS:
            attention.apply_attention_backend(models.transformer(model), choice, name=model)
    fp8 = None
    if fp8_reason is None:
        with times.stage("compile_fp8", "Building the fp8 path"):
            fp8, fp8_reason = try_build_fp8_path(
                models,
                configure=lambda transformer: attention.apply_attention_backend(transformer, choice, name="fp8"),
                placement=placement,
            )
    with times.stage("compile_bf16", "Building the compiled bf16 path"):
        compiled, compiled_reason = _try_build_compiled(models, placement)
    for path in (fp8, compiled):
        for key, seconds in path.setup_seconds.items() if path else ():
            times.add(f"{path.name}_{key}", seconds)  # of which: compiling (first calls) and the other sizes
    with times.stage("compile_cache_save", "Saving the compile cache"):
        logger.info("%s", compile_settings.save_cache_artifacts(config.compile_cache_dir).log_line())
    unavailable = {"fp8": fp8_reason, "compiled": compiled_reason}
    return ExecutionPaths(plain, compiled, fp8, {name: why for name, why in unavailable.items() if why})


def _try_build_compiled(
    models: FluxModels, placement: WeightPlacement | None
) -> tuple[ExecutionPath | None, str | None]:
    """The compiled bf16 path, or None and why: a failure to compile (a backend that cannot be traced, say) must
    leave a server that runs, on the plain path over the same modules, which runs them uncompiled anyway."""
    try:
        return build_compiled_path(models, park=_parker(placement, "bf16")), None
    except Exception as error:  # noqa: BLE001 - any failure of the optional path falls back, with its traceback
        logger.exception("Building the compiled bf16 path failed; requests will run the plain path")
        return None, f"the compiled path could not be built at setup ({error.__class__.__name__}: {error})"
