"""`script/gpu-check`: one prepared run on a GPU machine that measures what the speed work promises.

Usage (README-ready):

    script/gpu-check [--wheels DIR] [--budget-seconds 450] [--repeats 3] [--out FILE]   # a GPU machine
    script/gpu-check --dry                                                                # CPU, tiny, ~1 min

On a machine with torch but without diffusers / peft / torchao / transformers 5.23 / huggingface_hub 2 / httpx2
(an H200 image with torch 2.11 and no network), the wrapper first installs the wheels it brings along, from
`--wheels DIR` or `$GPU_CHECK_WHEELS` (default `./wheels`). Prepare that folder on a machine with pip access
(the wheels are NOT committed; `wheels/` is ignored by git and Docker):

    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d wheels \\
      diffusers==0.42.1 transformers==5.23.0 peft==0.21.2 huggingface_hub==2.4.0 torchao==0.18.0 \\
      httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 importlib_metadata==10.2.0 hf-xet==1.8.0 \\
      regex==2026.11.19 click==8.5.1 idna==3.20 anyio==4.16.0

(about 30 MB). The JSON report goes to `--out`, by default `$OUT/gpu-check.json` when `$OUT` is set, else
`./gpu-check.json`; it is rewritten (atomically) after every phase and after every timed row, so a run cut off
by a timeout still returns what it measured. A phase that raises is recorded with its traceback and the run goes
on; a phase whose inputs are missing (an earlier phase failed) is recorded as skipped with the reason; once
`--budget-seconds` are spent no new phase starts (the summary always runs) and timing loops stop early.

What it does, in one process (each phase a function below, in this order):

  environment  GPU, capability, memory, versions
  build        full-size FLUX.1 dev + schnell transformers, T5-XXL, CLIP-L and the FLUX VAE at their real configs,
               random weights, built directly on the GPU in bf16 (torch's default dtype set to bf16 inside a
               `torch.device` context: the peak is one bf16 copy, never an fp32 one); tokenizers and schedulers
               from the tiny test weights (their ids are valid for the real vocabularies); two rank-16 LoRAs
               written as safetensors files
  residency    byte counts of the built modules, the measured host->GPU copy rate, and the residency plans for
               an 80 GB GPU (78.6 GiB allocatable) and for this GPU
  baseline     plain diffusers FluxPipeline, eager, a rank-16 LoRA via `load_lora_weights` (before our paths
               touch the modules); prompts encoded per call, num_images_per_prompt=n
  attention    the attention backend measured and set as setup does (generation/attention.py)
  fp8_copies   `make_fp8_models`: fp8 transformers made on the GPU from the bf16 ones (before any LoRA slots)
  bf16_path    `build_compiled_path`: slots, compile, warm-up at 1024x1024 and 512x512 (setup split: slots /
               first call, which compiles / the other size)
  bf16_timings our GenerationService, go_fast off, LoRA on: dev 28 steps and schnell 4 steps at 1024x1024,
               1 and 4 outputs; one warm-up request per model then the median of --repeats, CUDA events
  fp8_path     `build_fp8_path` over the fp8 transformers (same split)
  fp8_timings  the same requests with go_fast on
  lora_swap    `HotswapAdapterManager.apply` alternating two rank-16 LoRA files, median, on both paths
  recompiles   requests through the service under error_on_recompile: LoRA swaps, two LoRAs, none, a model
               switch, go_fast on and off; dynamo frames compiled must be 0
  fp8_error    one transformer step through each path's (compiled) dev transformer with the exact kwargs the
               pipeline passes (captured by a forward pre-hook: joint_attention_kwargs included, so no
               recompile): relative error ||fp8 - bf16|| / ||bf16||, the compiled bf16 step against the same
               modules run eagerly (bf16 rounding), and each step's median seconds
  tflops       FLOPs per step from the config (2 x Linear params x tokens + attention) against the issue's
               ~74 TFLOP/step floor, and achieved TFLOP/s per step and per request
  summary      the issue's targets, pass/fail: dev go_fast <= 2.0 s/image with a LoRA, dev bf16 <= 4.0 s,
               schnell go_fast <= 0.4 s, LoRA swap <= 1 s, each >= 1.7x the baseline; peak memory against the
               80 GB plan

Every phase also records its seconds, the peak GPU memory it reached (torch.cuda.max_memory_allocated; on a CPU
the process's peak RSS) and how many frames torch.compile compiled during it.

`--dry` runs the very same phases on CPU at tiny size: the tiny test weights' configs, 1 step, 1 and 2 outputs,
torch.compile's "eager" backend, and the named size 1:1 shrunk to 64x64 for the run (bf16 convolutions of a
512x512 decode take seconds on a CPU), in one to two minutes; tests/test_gpu_check.py runs it so this script
cannot rot. Only in --dry, torchao's fp8 hardware gate (`quant_api._check_hardware_support`) is bypassed, so the
fp8 phases run on a CPU (torchao's float8 matmul has a CPU fallback); nothing of that is a speed measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "script"))

import torch  # noqa: E402

GIB = 2**30
ALLOCATABLE_80GB = int(78.6 * GIB)  # an 80 GB H100's allocatable memory (tests/test_residency.py, gpu-plan.md)
FLOOR_TFLOP_PER_STEP = 74.0  # the floor for one FLUX.1 step at 1024x1024
LORA_RANK = 16
TARGETS = {  # the targets, seconds per image with a LoRA (1 output)
    ("dev", "fp8"): 2.0,
    ("dev", "bf16"): 4.0,
    ("schnell", "fp8"): 0.4,
}
LORA_SWAP_TARGET = 1.0
SPEEDUP_TARGET = 1.7
TEXT_TOKENS = {"dev": 512, "schnell": 256}


@dataclass(frozen=True)
class Scale:
    """What differs between a GPU run and --dry: sizes, steps, device, compile backend. Nothing else."""

    dry: bool
    device: torch.device
    width: int
    height: int
    megapixels: str  # the request's megapixels at aspect ratio 1:1 (go_fast runs named sizes only)
    steps: dict[str, int]
    outputs: tuple[int, int]  # num_outputs of the two timed rows per model
    backend: str
    copy_rate_bytes: int
    attention_shape: dict[str, int]


def full_scale() -> Scale:
    from generation.setup_paths import FLUX_1MP_ATTENTION

    return Scale(
        False,
        torch.device("cuda"),
        1024,
        1024,
        "1",
        {"dev": 28, "schnell": 4},
        (1, 4),
        "inductor",
        256 * 2**20,
        dict(FLUX_1MP_ATTENTION),
    )


DRY_SIDE = 64  # --dry: aspect ratio 1:1 at 1 MP is 64x64 (16 image tokens), see `dry_sizes`


def dry_scale() -> Scale:
    return Scale(
        True,
        torch.device("cpu"),
        DRY_SIDE,
        DRY_SIDE,
        "1",
        {"dev": 1, "schnell": 1},
        (1, 2),
        "eager",
        8 * 2**20,
        {"seq_len": 64, "heads": 2, "head_dim": 16, "repeats": 1},
    )


# The report and the phase runner


class Report:
    """The JSON file: rewritten atomically (write a temporary file, then rename) whenever it changes."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.data: dict[str, Any] = {"meta": meta, "phases": {}}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.data, indent=2, default=_json_default) + "\n")
        os.replace(temporary, self.path)


@dataclass
class Context:
    """What phases share: the scale, the deadline, the report, and `state` (what earlier phases built)."""

    scale: Scale
    report: Report
    deadline: float  # time.monotonic() after which nothing new starts
    repeats: int
    repeats_4: int
    root: Path
    fail_phase: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    current: str = ""

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def partial(self, result: dict) -> None:
        """Save a running phase's results so far (a long phase cut off by a timeout still reports them)."""
        self.report.data["phases"][self.current] = {"status": "running", "result": result}
        self.report.save()


@dataclass(frozen=True)
class Phase:
    name: str
    run: Callable[[Context], dict]
    requires: tuple[str, ...] = ()  # keys of Context.state an earlier phase must have set
    always: bool = False  # runs even when the budget is spent (cheap: the summary)


def run_phases(phases: list[Phase], ctx: Context) -> dict:
    """Run each phase, recording its result or its error, and save the report after each one."""
    phases_report = ctx.report.data["phases"]
    for phase in phases:
        ctx.current = phase.name
        started = time.monotonic()
        entry: dict[str, Any] = {"started": _now()}
        missing = [key for key in phase.requires if key not in ctx.state]
        if ctx.time_left() <= 0 and not phase.always:
            entry.update(status="skipped", reason="the --budget-seconds were spent before this phase")
        elif missing:
            entry.update(status="skipped", reason=f"needs {', '.join(missing)} from an earlier phase that failed")
        else:
            _reset_peak_memory(ctx.scale.device)
            frames_before = _compiled_frames()
            try:
                if ctx.fail_phase == phase.name:
                    raise RuntimeError(f"--fail-phase {phase.name}: a deliberate failure (test hook)")
                entry.update(status="ok", result=phase.run(ctx))
            except Exception:  # noqa: BLE001 - recorded with its traceback; the next phases still run
                entry.update(status="error", error=traceback.format_exc())
                partial = phases_report.get(phase.name, {}).get("result")
                if partial:
                    entry["result"] = partial
            entry["peak_memory_bytes"] = _peak_memory(ctx.scale.device)
            entry["compiled_frames"] = _compiled_frames() - frames_before
        entry["seconds"] = time.monotonic() - started
        phases_report[phase.name] = entry
        ctx.report.save()
        logging.getLogger("gpu_check").warning("phase %s: %s (%.1f s)", phase.name, entry["status"], entry["seconds"])
    return phases_report


# Phases


def phase_environment(ctx: Context) -> dict:
    device = ctx.scale.device
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "device": str(device),
        "versions": {name: _version(name) for name in ("torch", "diffusers", "transformers", "peft", "torchao")},
        "cuda": torch.version.cuda,
        "dry": ctx.scale.dry,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        result.update(
            gpu=properties.name,
            capability=list(torch.cuda.get_device_capability(device)),
            total_memory_bytes=properties.total_memory,
            multiprocessors=properties.multi_processor_count,
        )
    else:
        result.update(gpu=None, capability=None, total_memory_bytes=None, cpu_count=os.cpu_count())
    return result


def phase_build(ctx: Context) -> dict:
    from bench_common import write_lora
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from generation.pipelines import FluxModels
    from testkit.flux1_models import CLIP_L, FLUX1_DEV_TRANSFORMER, FLUX1_VAE, T5_XXL
    from testkit.tiny_weights import write_tiny_weights
    from weights.layout import FLUX_DEV, FLUX_SCHNELL

    scale, weights = ctx.scale, ctx.root / "weights"
    seconds: dict[str, float] = {}
    with _timer(seconds, "tiny_weights", scale.device):  # tokenizers, schedulers, safety models, dry configs
        write_tiny_weights(weights)
    dev_dir, schnell_dir = weights / FLUX_DEV.name, weights / FLUX_SCHNELL.name
    if scale.dry:  # the tiny test weights' own configs
        transformer = dict(FluxTransformer2DModel.load_config(dev_dir / "transformer"))
        clip = CLIPTextConfig.from_pretrained(dev_dir / "text_encoder")
        t5 = T5Config.from_pretrained(dev_dir / "text_encoder_2")
        vae = dict(_vae_config(dev_dir / "vae"))
        what = "tiny test configs (testkit/tiny_weights.py), random weights, CPU, bf16"
    else:
        transformer, clip, t5, vae = (
            dict(FLUX1_DEV_TRANSFORMER),
            CLIPTextConfig(**CLIP_L),
            T5Config(**T5_XXL),
            FLUX1_VAE,
        )
        what = (
            "FLUX.1 [dev]/[schnell] transformers, T5-XXL, CLIP-L and the FLUX VAE at their real configs, random "
            "weights, built on the GPU in bf16"
        )
    transformer = {k: v for k, v in transformer.items() if not k.startswith("_")}
    dtype = torch.bfloat16
    with torch.device(scale.device), _default_dtype(dtype):
        with _timer(seconds, "transformer_dev", scale.device):
            dev = FluxTransformer2DModel(**{**transformer, "guidance_embeds": True})
        with _timer(seconds, "transformer_schnell", scale.device):
            schnell = FluxTransformer2DModel(**{**transformer, "guidance_embeds": False})  # schnell: no guidance
        with _timer(seconds, "t5", scale.device):
            text_encoder_2 = T5EncoderModel(t5)
        with _timer(seconds, "clip", scale.device):
            text_encoder = CLIPTextModel(clip)
        with _timer(seconds, "vae", scale.device):
            from diffusers import AutoencoderKL

            vae_model = AutoencoderKL(**{k: v for k, v in vae.items() if not k.startswith("_")})
    modules = {"dev": dev, "schnell": schnell, "t5": text_encoder_2, "clip": text_encoder, "vae": vae_model}
    for module in modules.values():
        module.eval().requires_grad_(False)
    with _timer(seconds, "pipelines", scale.device):
        base = FluxPipeline.from_pretrained(
            dev_dir, transformer=None, text_encoder=None, text_encoder_2=None, vae=None, local_files_only=True
        )
        shared = dict(
            vae=vae_model,
            text_encoder=text_encoder,
            tokenizer=base.tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=base.tokenizer_2,
        )
        schnell_scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(schnell_dir, subfolder="scheduler")
        models = FluxModels(
            FluxPipeline(scheduler=base.scheduler, transformer=dev, **shared),
            FluxPipeline(scheduler=schnell_scheduler, transformer=schnell, **shared),
            scale.device,
        )
    with _timer(seconds, "lora_files", scale.device):
        loras = {
            name: write_lora(ctx.root / f"lora-{name}.safetensors", dev, seed=seed, rank=LORA_RANK)
            for seed, name in enumerate("AB")
        }
    ctx.state.update(models=models, loras=loras, weights=weights, transformer_config=transformer)
    return {
        "what": what,
        "text_encoders": "T5-XXL and CLIP-L at their real configs (random weights), run for every prompt",
        "dtype": str(dtype),
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()},
        "dtypes": {name: str(next(m.parameters()).dtype) for name, m in modules.items()},
        "devices": {name: str(next(m.parameters()).device) for name, m in modules.items()},
        "lora": {name: {"rank": LORA_RANK, "bytes": path.stat().st_size} for name, path in loras.items()},
        "seconds": seconds,
    }


def phase_residency(ctx: Context) -> dict:
    from generation.residency import Components, measure_copy_rate, plan_residency

    models = ctx.state["models"]
    pipe = models.pipeline("dev", "txt2img")
    components = Components.from_modules(
        {m: models.transformer(m) for m in ("dev", "schnell")}, pipe.text_encoder_2, [pipe.text_encoder, pipe.vae]
    )
    copy_rate = measure_copy_rate(ctx.scale.device, nbytes=ctx.scale.copy_rate_bytes)
    budgets = {"80GB": ALLOCATABLE_80GB}
    if ctx.scale.device.type == "cuda":
        budgets["this_gpu"] = torch.cuda.mem_get_info(ctx.scale.device)[1]
    plans = {}
    for name, gpu_bytes in budgets.items():
        try:
            plan = plan_residency(components, gpu_bytes, True, copy_rate=copy_rate)
        except Exception as error:  # noqa: BLE001 - a plan that cannot exist is a result, not a failure
            plans[name] = {"error": f"{error.__class__.__name__}: {error}"}
            continue
        plans[name] = {
            "name": plan.name,
            "gpu_bytes": plan.gpu_bytes,
            "resident_bytes": plan.resident,
            "host_bytes": plan.host,
            "planned_peak_bytes": plan.peak,
            "headroom_bytes": plan.headroom,
            "margin_bytes": plan.margin,
            "fp8_served": plan.fp8_served,
            "swaps": [{"requests": s.requests, "component": s.component, "seconds": s.seconds} for s in plan.swaps],
            "describe": plan.describe(),
        }
    ctx.state["plans"] = plans
    return {
        "components_bytes": {
            "transformers": {m: vars(t) for m, t in components.transformers.items()},
            "t5": components.t5,
            "small": components.small,
            "note": "small = CLIP-L + VAE; the safety models (tiny stand-ins here) are not counted",
        },
        "copy_rate_bytes_per_second": copy_rate,
        "plans": plans,
    }


def phase_baseline(ctx: Context) -> dict:
    """Plain diffusers, as most LoRA servers run FLUX: FluxPipeline eager, the LoRA loaded the diffusers way."""
    models, scale = ctx.state["models"], ctx.scale
    result: dict[str, Any] = {"how": "diffusers FluxPipeline, eager, load_lora_weights (rank 16), SDPA", "rows": []}
    for model in ("dev", "schnell"):
        pipe = models.pipeline(model, "txt2img")
        pipe.load_lora_weights(ctx.state["loras"]["A"], adapter_name="baseline")
        try:

            def call(n: int, pipe=pipe, model=model) -> None:
                pipe(
                    prompt="a photo of TOK",
                    num_images_per_prompt=n,
                    num_inference_steps=scale.steps[model],
                    width=scale.width,
                    height=scale.height,
                    guidance_scale=3.0 if model == "dev" else 0.0,
                    generator=torch.Generator(scale.device).manual_seed(1),
                    max_sequence_length=TEXT_TOKENS[model],
                )

            _timed_rows(ctx, result, "baseline", model, call)
        finally:
            pipe.unload_lora_weights()  # the modules go back to plain Linear layers for the paths built next
    ctx.state["baseline"] = result["rows"]
    return result


def phase_attention(ctx: Context) -> dict:
    from generation import attention, compile_settings

    models, scale = ctx.state["models"], ctx.scale
    if not scale.dry:
        compile_settings.configure_compile_cache(ctx.root / "compile-cache")  # cold: a fresh cache
        compile_settings.choose_inductor_settings()
    choice = attention.resolve_attention_backend("auto", scale.device, torch.bfloat16, **scale.attention_shape)
    for model in ("dev", "schnell"):
        attention.apply_attention_backend(models.transformer(model), choice, name=model)
    ctx.state["attention"] = choice
    return {"backend": choice.backend, "line": choice.log_line()}


def phase_fp8_copies(ctx: Context) -> dict:
    from generation import attention
    from generation.fp8_path import fp8_unavailable_reason, make_fp8_models

    scale = ctx.scale
    reason = fp8_unavailable_reason(scale.device)
    if reason is not None and not scale.dry:
        raise RuntimeError(f"the fp8 path cannot run here: {reason}")
    started = time.perf_counter()
    with _fp8_on_cpu() if scale.dry else contextlib.nullcontext():
        fp8 = make_fp8_models(ctx.state["models"])
    _synchronize(scale.device)
    seconds = time.perf_counter() - started
    if "attention" in ctx.state:
        for model in ("dev", "schnell"):
            attention.apply_attention_backend(fp8.transformer(model), ctx.state["attention"], name=f"fp8 {model}")
    ctx.state["fp8_models"] = fp8
    weight = fp8.transformer("dev").transformer_blocks[0].attn.to_q.weight
    return {
        "seconds": seconds,
        "weight_type": type(weight).__name__,
        "note": "dry: torchao's hardware check bypassed on CPU" if scale.dry else reason or "fp8 available",
    }


def phase_bf16_path(ctx: Context) -> dict:
    from generation.compiled_path import build_compiled_path

    return _path_phase(ctx, "bf16_path", lambda sizes: build_compiled_path(ctx.state["models"], **_options(ctx, sizes)))


def phase_fp8_path(ctx: Context) -> dict:
    from generation.fp8_path import build_fp8_path

    return _path_phase(ctx, "fp8_path", lambda sizes: build_fp8_path(ctx.state["fp8_models"], **_options(ctx, sizes)))


def _options(ctx: Context, sizes: list[tuple[int, int]]) -> dict:
    return {"backend": ctx.scale.backend, "warm_up_sizes": sizes}


def _path_phase(ctx: Context, key: str, build) -> dict:
    """Build one execution path (its setup split is the phase's result) and the service over what is built."""
    path, split = _build_split(ctx, build)
    ctx.state[key] = path
    _make_service(ctx)
    return split


def phase_bf16_timings(ctx: Context) -> dict:
    return _service_timings(ctx, go_fast=False)


def phase_fp8_timings(ctx: Context) -> dict:
    result = _service_timings(ctx, go_fast=True)
    if any(row.get("path", "fp8") != "fp8" for row in result["rows"]):
        raise RuntimeError(f"go_fast requests did not run the fp8 path: {result['rows']}")
    return result


def phase_lora_swap(ctx: Context) -> dict:
    """HotswapAdapterManager.apply, alternating two rank-16 LoRA files (both on disk): what a request whose LoRA
    differs from the last one pays before denoising."""
    from lora_loader.adapters import LoraSpec

    result: dict[str, Any] = {}
    specs = [
        LoraSpec(key=f"gpu-check-{n}", path=p, scale=1.0, source=f"lora-{n}") for n, p in ctx.state["loras"].items()
    ]
    for name in ("bf16_path", "fp8_path"):
        path = ctx.state.get(name)
        if path is None:
            result[name] = "not built"
            continue
        times = []
        for index in range(max(4, 2 * ctx.repeats) + 1):
            if index > 1 and ctx.time_left() <= 0:
                break
            spec = specs[index % 2]
            seconds = _timed(lambda spec=spec, path=path: path.adapters.apply("dev", spec, None), ctx.scale.device)
            if index:  # the first also reads the slots' layout
                times.append(seconds)
        path.adapters.empty()
        result[name] = {"median_seconds": statistics.median(times), "seconds": times}
    return result


def phase_recompiles(ctx: Context) -> dict:
    """Requests after warm-up that swap LoRAs, use two or none, switch models and paths: none may compile."""
    from generation.request import GenerationRequest, LoraChoice

    service, scale = ctx.state["service"], ctx.scale
    a, b = (LoraChoice(str(path), 1.0) for path in ctx.state["loras"].values())
    go_fast = "fp8_path" in ctx.state
    sequence = [
        ("dev", False, a, None),
        ("dev", False, b, None),
        ("dev", False, a, b),
        ("dev", False, None, None),
        ("schnell", False, b, None),
        ("dev", go_fast, a, None),
        ("dev", go_fast, b, None),
        ("schnell", go_fast, a, None),
        ("dev", False, b, None),
    ]
    before, ran, error = _compiled_frames(), [], None
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            for model, fast, main, extra in sequence:
                request = GenerationRequest(
                    prompt="a photo of TOK",
                    model=model,
                    num_inference_steps=1,
                    megapixels=scale.megapixels,
                    seed=3,
                    go_fast=fast,
                    main_lora=main,
                    extra_lora=extra,
                    disable_safety_checker=True,
                    output_format="jpg",
                )
                ran.append(f"{model} {service.generate(request).path} loras={int(bool(main)) + int(bool(extra))}")
    except Exception as caught:  # noqa: BLE001 - a recompile is the finding, reported as such
        error = f"{caught.__class__.__name__}: {caught}"
    compiled = _compiled_frames() - before
    return {
        "requests": ran,
        "frames_compiled": compiled,
        "error": error,
        "zero_recompiles": compiled == 0 and not error,
    }


def phase_fp8_error(ctx: Context) -> dict:
    """One dev transformer step on both paths, inputs captured from the bf16 pipeline's own call."""
    bf16, fp8, scale = ctx.state["bf16_path"], ctx.state["fp8_path"], ctx.scale
    for path in (bf16, fp8):
        path.adapters.empty()  # slots at scale 0: the base models
    kwargs = _captured_transformer_kwargs(bf16, "dev", scale)
    outputs, step_seconds = {}, {}
    with torch.inference_mode():
        for name, path, eager in (("bf16", bf16, False), ("fp8", fp8, False), ("bf16_eager", bf16, True)):
            transformer = path.models.transformer("dev")
            with path.running(eager):
                outputs[name] = transformer(**kwargs)[0].float()
                times = [_timed(lambda t=transformer: t(**kwargs), scale.device) for _ in range(max(3, ctx.repeats))]
            step_seconds[name] = statistics.median(times)
    reference = outputs["bf16"]
    error = float((outputs["fp8"] - reference).norm() / reference.norm())
    eager = outputs["bf16_eager"]
    ctx.state["step_seconds"] = step_seconds
    return {
        "relative_error": error,
        # The compiled bf16 path against the same modules run eagerly: it must stay within bf16 rounding.
        "compiled_vs_eager_relative_error": float((reference - eager).norm() / eager.norm()),
        "finite": bool(torch.isfinite(reference).all() and torch.isfinite(outputs["fp8"]).all()),
        "step_seconds": step_seconds,
        "inputs": {k: list(v.shape) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()},
    }


def phase_tflops(ctx: Context) -> dict:
    scale = ctx.scale
    flops = {
        m: flops_per_step(ctx.state["transformer_config"], scale.width, scale.height, m) for m in ("dev", "schnell")
    }
    result: dict[str, Any] = {
        "tflop_per_step": {m: f / 1e12 for m, f in flops.items()},
        "floor_tflop_per_step": FLOOR_TFLOP_PER_STEP,
        "formula": "2 x (Linear in x out) x tokens it sees (image, text, both, or 1 for modulation) + attention "
        "4 x (image+text)^2 x 3072 per block",
    }
    steps = ctx.state.get("step_seconds")
    if steps:
        result["achieved_tflops_per_step"] = {path: flops["dev"] / s / 1e12 for path, s in steps.items()}
    effective = {}
    for key in ("baseline", "bf16", "fp8"):
        for row in ctx.state.get(key, []):
            if row.get("seconds_per_image"):
                work = flops[row["model"]] * scale.steps[row["model"]]
                effective[f"{key} {row['model']} x{row['outputs']}"] = work / row["seconds_per_image"] / 1e12
    result["effective_tflops_per_request"] = effective  # whole requests: encoders, VAE and saving included
    return result


def phase_summary(ctx: Context) -> dict:
    rows = {(key, r["model"], r["outputs"]): r for key in ("baseline", "bf16", "fp8") for r in ctx.state.get(key, [])}
    targets = []

    def seconds(key: str, model: str) -> float | None:
        return rows.get((key, model, 1), {}).get("seconds_per_image")

    for (model, path), limit in TARGETS.items():
        ours, base = seconds(path, model), seconds("baseline", model)
        speedup = base / ours if ours and base else None
        targets.append(
            {
                "target": f"{model} {'go_fast' if path == 'fp8' else 'bf16'} <= {limit} s/image with a LoRA",
                "seconds_per_image": ours,
                "pass": ours is not None and ours <= limit,
                "speedup_vs_baseline": speedup,
                "speedup_pass": speedup is not None and speedup >= SPEEDUP_TARGET,
            }
        )
    swap = (ctx.report.data["phases"].get("lora_swap", {}).get("result") or {}).get("bf16_path")
    swap_seconds = swap.get("median_seconds") if isinstance(swap, dict) else None
    targets.append(
        {
            "target": f"LoRA swap <= {LORA_SWAP_TARGET} s",
            "seconds": swap_seconds,
            "pass": swap_seconds is not None and swap_seconds <= LORA_SWAP_TARGET,
        }
    )
    recompiles = ctx.report.data["phases"].get("recompiles", {}).get("result") or {}
    targets.append(
        {"target": "zero recompiles on swaps and a model switch", "pass": bool(recompiles.get("zero_recompiles"))}
    )
    activations = [
        row["activation_peak_bytes"]
        for key in ("bf16", "fp8")
        for row in ctx.state.get(key, [])
        if row.get("activation_peak_bytes") is not None
    ]
    memory: dict[str, Any] = {"measured_activation_peak_bytes": max(activations) if activations else None}
    plan = (ctx.state.get("plans") or {}).get("80GB") or {}
    if activations and "resident_bytes" in plan:
        peak = plan["resident_bytes"] + max(activations)
        memory.update(
            peak_80gb_bytes=peak,
            gpu_bytes=plan["gpu_bytes"],
            fits_80gb=peak <= plan["gpu_bytes"],
            how="the 80 GB plan's resident bytes + the largest activation growth measured in a request",
        )
    phases = ctx.report.data["phases"]
    return {
        "targets": targets,
        "memory_80gb": memory,
        "phases_with_errors": [name for name, p in phases.items() if p.get("status") == "error"],
        "phases_skipped": [name for name, p in phases.items() if p.get("status") == "skipped"],
    }


PHASES = [
    Phase("environment", phase_environment),
    Phase("build", phase_build),
    Phase("residency", phase_residency, ("models",)),
    Phase("baseline", phase_baseline, ("models", "loras")),
    Phase("attention", phase_attention, ("models",)),
    Phase("fp8_copies", phase_fp8_copies, ("models",)),
    Phase("bf16_path", phase_bf16_path, ("models",)),
    Phase("bf16_timings", phase_bf16_timings, ("service", "bf16_path")),
    Phase("fp8_path", phase_fp8_path, ("fp8_models", "bf16_path")),
    Phase("fp8_timings", phase_fp8_timings, ("service", "fp8_path")),
    Phase("lora_swap", phase_lora_swap, ("bf16_path", "loras")),
    Phase("recompiles", phase_recompiles, ("service", "bf16_path")),
    Phase("fp8_error", phase_fp8_error, ("bf16_path", "fp8_path")),
    Phase("tflops", phase_tflops, ("transformer_config",)),
    Phase("summary", phase_summary, always=True),
]


# Helpers of the phases


def flops_per_step(config: dict, width: int, height: int, model: str) -> float:
    """FLOPs of one transformer step from its config: every Linear layer (2 x in x out per token it sees) plus
    attention (QK^T and AV: 4 x sequence^2 x inner width per block). Counted on a meta-device model, so the
    layers are exactly diffusers' (the modulation Linears see one token: the time/guidance embedding)."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**{**config, "guidance_embeds": model == "dev"})
    image, text = (width // 16) * (height // 16), TEXT_TOKENS[model]
    total = 0.0
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear):
            total += 2 * module.in_features * module.out_features * _tokens(name, image, text)
    blocks = len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    return total + 4 * (image + text) ** 2 * inner * blocks


def _tokens(name: str, image: int, text: int) -> int:
    if "norm" in name or name.startswith("time_text_embed"):
        return 1  # AdaLayerNorm modulation and the time/guidance/pooled embedders: one vector per image
    if name.startswith("context_embedder"):
        return text
    if name.startswith(("x_embedder", "proj_out")):
        return image
    if name.startswith("single_transformer_blocks."):
        return image + text
    if name.startswith("transformer_blocks."):
        return text if ("add_" in name or "ff_context" in name) else image
    return 1


def _build_split(ctx: Context, build: Callable) -> tuple[Any, dict]:
    """Build a compiled path, timing its parts: LoRA slots (timed here), then the path's own `setup_seconds`:
    the first call per model (torch.compile compiles the blocks: dynamic shapes, once for all sizes) and the
    other warm-up sizes (the timed size's quarter, 0.25 MP: a second size must not recompile)."""
    from generation import compiled_path

    split: dict[str, float] = {}
    width, height = ctx.scale.width, ctx.scale.height
    warm_up_sizes = [(width, height), (width // 2, height // 2)]
    original_prepare = compiled_path.HotswapAdapterManager.prepare
    device = ctx.scale.device

    def prepare(self, *args, **kwargs):
        with _timer(split, "slots", device):
            return original_prepare(self, *args, **kwargs)

    started = time.perf_counter()
    compiled_path.HotswapAdapterManager.prepare = prepare
    try:
        path = build(warm_up_sizes)
    finally:
        compiled_path.HotswapAdapterManager.prepare = original_prepare
    _synchronize(device)
    split.update(path.setup_seconds)
    split["total"] = time.perf_counter() - started
    return path, {"setup_seconds": split, "warm_up_sizes": warm_up_sizes, "backend": ctx.scale.backend}


def _make_service(ctx: Context) -> None:
    """The service over the paths built so far, as GenerationService.from_config would hold them."""
    from generation.execution import ExecutionPaths
    from generation.loras import LoraStage
    from generation.safety import SafetyChecker
    from generation.service import GenerationService
    from generation.settings import Settings
    from generation.setup_paths import plain_path
    from lora_loader import LoraFetcher
    from serverconfig import ServerConfig
    from weights.layout import NSFW_CLASSIFIER, SAFETY_CHECKER

    models, weights, device = ctx.state["models"], ctx.state["weights"], ctx.scale.device
    if "safety" not in ctx.state:
        ctx.state["safety"] = SafetyChecker(
            weights / SAFETY_CHECKER.name, weights / NSFW_CLASSIFIER.name, device, torch.bfloat16
        )
        config = ServerConfig(lora_cache_dir=ctx.root / "lora-cache", lora_local_dirs=(ctx.root,))
        ctx.state["fetcher"] = LoraFetcher(config)
        ctx.state["plain"] = plain_path(models)
    fp8 = ctx.state.get("fp8_path")
    paths = ExecutionPaths(
        ctx.state["plain"], ctx.state["bf16_path"], fp8, unavailable=None if fp8 else {"fp8": "not built yet"}
    )
    settings = Settings(weights, device, torch.bfloat16, ctx.root / "outputs")
    ctx.state["service"] = GenerationService(settings, ctx.state["safety"], LoraStage(ctx.state["fetcher"], paths))


def _service_timings(ctx: Context, go_fast: bool) -> dict:
    """Requests through GenerationService.generate, as a prediction runs them (LoRA A, jpg, safety off)."""
    from generation.request import GenerationRequest, LoraChoice

    service, scale = ctx.state["service"], ctx.scale
    key = "fp8" if go_fast else "bf16"
    result: dict[str, Any] = {
        "how": "GenerationService.generate, aspect 1:1, LoRA rank 16 at scale 1, jpg, safety checker off; "
        "seconds_per_image = end to end / n; denoise = the result's denoise stage (loop + VAE decode)",
        "rows": [],
    }
    lora = LoraChoice(str(ctx.state["loras"]["A"]), 1.0)
    for model in ("dev", "schnell"):
        ran = {}

        def call(n: int, model=model, ran=ran) -> None:
            request = GenerationRequest(
                prompt="a photo of TOK",
                model=model,
                num_outputs=n,
                num_inference_steps=scale.steps[model],
                aspect_ratio="1:1",
                megapixels=scale.megapixels,
                seed=1,
                go_fast=go_fast,
                main_lora=lora,
                disable_safety_checker=True,
                output_format="jpg",
            )
            generated = service.generate(request)
            ran.update(path=generated.path, denoise=generated.stage_seconds.get("denoise"))

        _timed_rows(ctx, result, key, model, call, ran)
    ctx.state[key] = result["rows"]
    return result


def _timed_rows(ctx: Context, result: dict, key: str, model: str, call: Callable[[int], None], ran=None) -> None:
    """One warm-up call, then rows for 1 and 4 outputs: median seconds of the repeats (stopped early when the
    budget is spent), the activation memory each row added on top of what was allocated before it."""
    scale = ctx.scale
    call(1)  # warm-up: first LoRA attach, kernels' first launch
    for n, repeats in zip(scale.outputs, (ctx.repeats, ctx.repeats_4), strict=True):
        if ctx.time_left() <= 0:
            result["rows"].append({"model": model, "outputs": n, "stopped": "budget spent"})
            continue
        _reset_peak_memory(scale.device)
        allocated = torch.cuda.memory_allocated(scale.device) if scale.device.type == "cuda" else None
        times, denoise = [], []
        for index in range(max(1, repeats)):
            if index and ctx.time_left() <= 0:
                break
            times.append(_timed(lambda n=n: call(n), scale.device))
            if ran and ran.get("denoise") is not None:
                denoise.append(ran["denoise"])
        seconds = statistics.median(times)
        row = {
            "model": model,
            "outputs": n,
            "steps": scale.steps[model],
            "size": f"{scale.width}x{scale.height}",
            "seconds": times,
            "median_seconds": seconds,
            "seconds_per_image": seconds / n,
            "activation_peak_bytes": (torch.cuda.max_memory_allocated(scale.device) - allocated)
            if allocated is not None
            else None,
        }
        if ran:
            row["path"] = ran.get("path")
        if denoise:
            row["denoise_seconds_per_step"] = statistics.median(denoise) / (n * scale.steps[model])
        result["rows"].append(row)
        ctx.state[key] = result["rows"]
        ctx.partial(result)


def _captured_transformer_kwargs(path, model: str, scale: Scale) -> dict:
    """The kwargs the pipeline passes the transformer at its first step (one-step latent render on `path`)."""
    captured: dict[str, Any] = {}
    transformer = path.models.transformer(model)

    def hook(module, args, kwargs):
        if not captured:
            captured.update({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})

    from generation.request import MAX_SEQUENCE_LENGTH

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            embeddings = path.models.encode_prompt(model, "a photo of TOK", MAX_SEQUENCE_LENGTH[model])
            with path.running():
                path.models.pipeline(model, "txt2img")(
                    prompt_embeds=embeddings.prompt_embeds,
                    pooled_prompt_embeds=embeddings.pooled_prompt_embeds,
                    width=scale.width,
                    height=scale.height,
                    num_inference_steps=1,
                    generator=torch.Generator(scale.device).manual_seed(0),
                    output_type="latent",
                )
    finally:
        handle.remove()
    return captured


@contextlib.contextmanager
def _fp8_on_cpu() -> Iterator[None]:
    """--dry only: torchao refuses float8 on hardware without fp8 matmuls; its CPU fallback runs anyway."""
    from unittest import mock

    from torchao.quantization import quant_api

    with mock.patch.object(quant_api, "_check_hardware_support", lambda *args, **kwargs: None):
        yield


@contextlib.contextmanager
def dry_sizes() -> Iterator[None]:
    """--dry only: the named size 1:1 shrunk to 64x64, so every request (go_fast included, which runs named sizes
    only) decodes a few latents instead of a 512x512 image: bf16 convolutions take seconds on a CPU."""
    from unittest import mock

    from generation import sizes

    with mock.patch.dict(sizes.ASPECT_RATIOS, {"1:1": (DRY_SIDE, DRY_SIDE)}):
        yield


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Modules built inside are created in `dtype`: no fp32 copy first."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def _timer(into: dict, name: str, device: torch.device) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        _synchronize(device)
        into[name] = into.get(name, 0.0) + time.perf_counter() - started


def _timed(action: Callable[[], Any], device: torch.device) -> float:
    """Seconds of `action`: CUDA events around it on a GPU (then a synchronize), perf_counter on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        action()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's peak RSS (Linux: KiB)


def _compiled_frames() -> int:
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


def _vae_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path | torch.device | torch.dtype):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value)


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu-check.json" if os.environ.get("OUT") else Path("gpu-check.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="script/gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="the same phases at tiny size on CPU (tests)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default $OUT/gpu-check.json)")
    parser.add_argument("--budget-seconds", type=float, default=450.0, help="no new phase starts after this")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per 1-output row, after a warm-up")
    parser.add_argument("--repeats-4", type=int, default=2, help="timed runs per 4-output row (2 in --dry)")
    parser.add_argument("--fail-phase", help="test hook: make this phase raise, to check the run goes on")
    args = parser.parse_args(argv)
    started = time.monotonic()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    out = args.out or default_out()
    torch.set_grad_enabled(False)
    scale = dry_scale() if args.dry else full_scale()
    if not args.dry and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --dry for the CPU check")
    meta = {
        "started": _now(),
        "dry": args.dry,
        "argv": sys.argv[1:],
        "budget_seconds": args.budget_seconds,
        "repeats": args.repeats,
        "repeats_4": args.repeats_4,
        "size": f"{scale.width}x{scale.height}",
        "steps": scale.steps,
    }
    report = Report(out, meta)
    report.save()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, dry_sizes() if args.dry else contextlib.nullcontext():
        ctx = Context(
            scale,
            report,
            started + args.budget_seconds,
            args.repeats,
            args.repeats_4,
            Path(tmp),
            fail_phase=args.fail_phase,
        )
        run_phases(PHASES, ctx)
    report.data["meta"].update(finished=_now(), seconds=time.monotonic() - started)
    report.save()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
