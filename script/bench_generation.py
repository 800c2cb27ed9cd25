"""`script/bench generation`: seconds per image and per step, plain diffusers vs our predictor (bf16 and go_fast).

Full size (a GPU): FLUX.1-dev/schnell-shaped models with random weights are built directly on the GPU (no
download: speed does not depend on the weights' values), with a rank-16 LoRA attached, and timed in one run:
  baseline   diffusers' FluxPipeline on the same modules, the LoRA loaded the diffusers way
  bf16       our GenerationService, go_fast off
  go_fast    our GenerationService, go_fast on (fp8 + compile; "n/a" with the reason where it cannot run)
for dev (28 steps) and schnell (4 steps) at 1024x1024, 1 and 4 outputs; plus LoRA swap time, setup time,
peak memory, achieved TFLOP/s against the transformer's FLOPs per step, and the fp8-vs-bf16 relative error
of one transformer step. Medians of --repeats runs after a warm-up run; CUDA-synchronised timing.

--tiny runs the same on the tiny test weights on CPU (seconds), so CI keeps the script working.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from bench_common import static_server, write_lora
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from generation.errors import UserInputError
from generation.fast_path import FastPath
from generation.pipelines import FluxModels
from generation.request import GenerationRequest, LoraChoice
from generation.safety import SafetyChecker
from generation.service import GenerationService
from generation.settings import Settings
from lora_loader import LoraFetcher
from lora_loader.adapters import AdapterManager
from serverconfig import ServerConfig
from testkit.flux1_models import CLIP_L, FLUX1_DEV_TRANSFORMER, T5_XXL
from testkit.tiny_weights import write_tiny_weights
from weights.layout import FLUX_DEV, FLUX_SCHNELL, NSFW_CLASSIFIER, SAFETY_CHECKER

FLUX_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
STEPS = {"dev": 28, "schnell": 4}
LORA_RANK = 16


@dataclass
class Run:
    seconds: float  # end to end, one request
    denoise_seconds: float  # sum over outputs of the denoising loops


def bench_generation(tiny: bool, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="flux-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        service, description = build_service(root, tiny)
        setup_seconds = time.perf_counter() - started
        size = 256 if tiny else 1024
        lora = write_lora(root / "lora.safetensors", service.models.transformer("dev"), seed=0, rank=LORA_RANK)
        write_lora(root / "other.safetensors", service.models.transformer("dev"), seed=1, rank=LORA_RANK)
        with static_server(root) as base_url:
            service.loras.fetcher = _fetcher(root, base_url)
            rows = [
                row
                for model in STEPS
                for n in (1, 4)
                for row in bench_model(service, model, n, size, base_url, repeats)
            ]
            swap = lora_swap_seconds(service, base_url, repeats)
        return {
            "models": description,
            "device": _device_name(service.settings.device),
            "size": f"{size}x{size}",
            "lora": f"rank {LORA_RANK}, {lora.stat().st_size / 1e6:.1f} MB",
            "setup_seconds": setup_seconds,
            "go_fast": "fp8 path built" if service.fast else f"n/a: {service.fast_unavailable}",
            "rows": rows,
            "lora_swap_seconds": swap,
            "peak_memory_gb": _peak_memory_gb(service.settings.device),
            "fp8_relative_error": fp8_relative_error(service, size),
            "tflop_per_step": {m: flops_per_step(service.models.transformer(m), size, size, m) / 1e12 for m in STEPS},
        }


def build_service(root: Path, tiny: bool) -> tuple[GenerationService, str]:
    write_tiny_weights(root / "weights")  # tokenizers, schedulers and safety models come from here
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    settings = Settings(root / "weights", device, dtype, root / "outputs")
    weights = root / "weights"
    models = FluxModels.load(weights / FLUX_DEV.name, weights / FLUX_SCHNELL.name, device, dtype)
    description = "tiny test models (CPU, fp32)"
    if not tiny:
        models = full_size_models(models, device, dtype)
        description = "FLUX.1-dev/schnell shapes, random weights (12 B transformer, T5-XXL, CLIP-L, FLUX VAE)"
    safety = SafetyChecker(weights / SAFETY_CHECKER.name, weights / NSFW_CLASSIFIER.name, device, dtype)
    fast, reason = FastPath.try_build(models, {m: models.transformer(m) for m in STEPS})  # no weight files
    loras = _lora_stage(root, models, fast)
    return GenerationService(settings, models, safety, loras, fast, reason), description


def full_size_models(tiny_models: FluxModels, device: torch.device, dtype: torch.dtype) -> FluxModels:
    """FLUX.1's real shapes built on the device; the tiny tokenizers' ids are valid for the big vocabularies."""
    with torch.device(device):
        shared = dict(
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)).to(dtype),
            text_encoder_2=T5EncoderModel(T5Config(**T5_XXL)).to(dtype),
            vae=AutoencoderKL(**FLUX_VAE).to(dtype),
        )
        pipes = []
        for model in STEPS:
            base = tiny_models.pipeline(model, "txt2img")
            config = {**FLUX1_DEV_TRANSFORMER, "guidance_embeds": model == "dev"}  # schnell has no guidance
            transformer = FluxTransformer2DModel(**config).to(dtype)
            pipes.append(FluxPipeline(**{**base.components, **shared, "transformer": transformer}))
    return FluxModels(*pipes, device)


def _lora_stage(root: Path, models: FluxModels, fast):
    from generation.loras import LoraStage

    return LoraStage(_fetcher(root, ""), AdapterManager(models), fast and fast.adapters)


def _fetcher(root: Path, base_url: str) -> LoraFetcher:
    return LoraFetcher(ServerConfig(lora_cache_dir=root / "lora-cache", allow_private_urls=True))


def bench_model(service, model: str, n: int, size: int, base_url: str, repeats: int) -> list[dict]:
    lora = f"{base_url}/lora.safetensors"
    request = dict(
        prompt="a photo of TOK",
        model=model,
        num_outputs=n,
        num_inference_steps=STEPS[model],
        aspect_ratio="custom",
        width=size,
        height=size,
        seed=1,
        disable_safety_checker=True,
        main_lora=LoraChoice(lora, 1.0),
        output_format="png",
    )
    rows = [_row("baseline diffusers", model, n, size, time_baseline(service, model, n, size, lora, repeats))]
    for label, go_fast in (("ours bf16", False), ("ours go_fast", True)):
        aspect = "1:1" if size == 1024 else "custom"  # go_fast runs named sizes; custom is bf16 by contract
        runs = time_service(service, {**request, "go_fast": go_fast, "aspect_ratio": aspect}, repeats)
        if go_fast and service.fast is None:
            rows.append({"setup": label, "model": model, "outputs": n, "note": f"n/a: {service.fast_unavailable}"})
        else:
            rows.append(_row(label, model, n, size, runs))
    return rows


def time_baseline(service, model: str, n: int, size: int, lora: str, repeats: int) -> list[Run]:
    """diffusers' own FluxPipeline on the same modules, as most LoRA servers run it."""
    service.loras.plain.apply(model, None, None)
    pipe = service.models.pipeline(model, "txt2img")
    pipe.load_lora_weights(service.loras.fetcher.fetch(lora).path, adapter_name="baseline")
    steps = STEPS[model]

    def call():
        generator = torch.Generator(service.settings.device).manual_seed(1)
        pipe(
            prompt="a photo of TOK",
            num_images_per_prompt=n,
            num_inference_steps=steps,
            width=size,
            height=size,
            guidance_scale=3.0 if model == "dev" else 0.0,
            generator=generator,
            max_sequence_length=512 if model == "dev" else 256,
        )

    try:
        call()  # warm-up
        runs = []
        for _ in range(repeats):
            seconds = synchronized(call, service.settings.device)
            runs.append(Run(seconds, seconds))
        return runs
    finally:
        pipe.delete_adapters(["baseline"])


def time_service(service, fields: dict, repeats: int) -> list[Run]:
    """End-to-end seconds of each request, and the denoising part of it (the result's stage times: the sum over
    outputs of their denoising loops and VAE decodes, which end in a CPU image, so the GPU has finished)."""
    try:
        service.generate(GenerationRequest(**fields))  # warm-up (and LoRA attach)
        results = []

        def call() -> None:
            results.append(service.generate(GenerationRequest(**fields)))

        runs = [Run(synchronized(call, service.settings.device), 0.0) for _ in range(repeats)]
        return [Run(run.seconds, result.stage_seconds["denoise"]) for run, result in zip(runs, results, strict=True)]
    except UserInputError as error:
        raise SystemExit(f"benchmark request refused: {error}") from error


def lora_swap_seconds(service, base_url: str, repeats: int) -> float:
    """A swap between two LoRAs already in the disk cache, as a prediction pays it (plain path)."""
    times = []
    for index in range(repeats + 1):
        source = f"{base_url}/{'other' if index % 2 else 'lora'}.safetensors"
        fields = dict(
            prompt="x",
            num_inference_steps=1,
            megapixels="0.25",
            disable_safety_checker=True,
            main_lora=LoraChoice(source, 1.0),
        )
        started = time.perf_counter()
        service.loras.apply(GenerationRequest(**fields), fast_path=False)
        if index:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def fp8_relative_error(service, size: int) -> str | float:
    """‖fp8 − bf16‖ / ‖bf16‖ of one dev transformer step on the same inputs, LoRAs off."""
    if service.fast is None:
        return f"n/a: {service.fast_unavailable}"
    service.loras.apply(GenerationRequest(prompt="x"), fast_path=False)
    inputs = _transformer_inputs(service.models.transformer("dev"), size, service.settings.device)
    with torch.inference_mode():
        reference = service.models.transformer("dev")(**inputs).sample.float()
        fast = service.fast.models.transformer("dev")(**inputs).sample.float()
    return float((fast - reference).norm() / reference.norm())


def _transformer_inputs(transformer, size: int, device: torch.device) -> dict:
    config, dtype = transformer.config, transformer.dtype
    tokens, text = (size // 16) ** 2, 512
    generator = torch.Generator(device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device).to(dtype)

    ids = torch.zeros(tokens, 3, device=device)
    ids[:, 1] = torch.arange(tokens, device=device) // (size // 16)
    ids[:, 2] = torch.arange(tokens, device=device) % (size // 16)
    return dict(
        hidden_states=randn(1, tokens, config.in_channels),
        encoder_hidden_states=randn(1, text, config.joint_attention_dim),
        pooled_projections=randn(1, config.pooled_projection_dim),
        timestep=torch.tensor([0.5], device=device, dtype=dtype),
        guidance=torch.tensor([3.5], device=device, dtype=dtype) if config.guidance_embeds else None,
        img_ids=ids,
        txt_ids=torch.zeros(text, 3, device=device),
        return_dict=True,
    )


def flops_per_step(transformer, width: int, height: int, model: str) -> float:
    """Matmul FLOPs of one transformer step: every Linear on the tokens it sees, plus attention (QKᵀ and AV)."""
    image, text = (width // 16) * (height // 16), 512 if model == "dev" else 256
    total = 0.0
    for name, module in transformer.named_modules():
        if not isinstance(module, torch.nn.Linear) or "transformer_blocks." not in name:
            continue
        text_stream = name.startswith("transformer_blocks.") and any(
            part in name for part in ("add_", "_context", "norm1_context", "to_add_out")
        )
        tokens = text if text_stream else image if name.startswith("transformer_blocks.") else image + text
        total += 2 * module.in_features * module.out_features * tokens
    blocks = len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    return total + 4 * (image + text) ** 2 * inner * blocks


def synchronized(action, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        action()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _row(label: str, model: str, n: int, size: int, runs: list[Run]) -> dict:
    seconds = statistics.median(r.seconds for r in runs)
    denoise = statistics.median(r.denoise_seconds for r in runs)
    return {
        "setup": label,
        "model": model,
        "outputs": n,
        "seconds_per_image": seconds / n,
        "seconds_per_step": denoise / (n * STEPS[model]),
        "end_to_end_seconds": seconds,
    }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return psutil.Process().memory_info().rss / 1e9


def print_report(results: dict) -> None:
    print(f"models: {results['models']}\ndevice: {results['device']}, {results['size']}, LoRA {results['lora']}")
    print(f"setup: {results['setup_seconds']:.1f} s; go_fast: {results['go_fast']}\n")
    print(f"  {'setup':<20}{'model':<9}{'n':>2} {'s/image':>9} {'s/step':>9} {'TFLOP/s':>9}")
    for row in results["rows"]:
        if "note" in row:
            print(f"  {row['setup']:<20}{row['model']:<9}{row['outputs']:>2}  {row['note']}")
            continue
        rate = results["tflop_per_step"][row["model"]] / row["seconds_per_step"]
        print(
            f"  {row['setup']:<20}{row['model']:<9}{row['outputs']:>2} {row['seconds_per_image']:9.3f}"
            f" {row['seconds_per_step']:9.4f} {rate:9.2f}"
        )
    print(f"\nLoRA swap (both cached, plain path): {results['lora_swap_seconds']:.3f} s")
    print(
        f"peak memory: {results['peak_memory_gb']:.1f} GB; fp8 vs bf16 relative error: {results['fp8_relative_error']}"
    )
    print("TFLOP per step: " + ", ".join(f"{m} {v:.2f}" for m, v in results["tflop_per_step"].items()))
