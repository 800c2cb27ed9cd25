"""generation.residency: exact byte counts (FLUX.1's real configs on the meta device, the tiny checkpoints' headers
against the loaded models), the residency plan on the GPUs it must serve, and parking modules in host memory."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from safetensors.torch import save_file
from transformers import (
    AutoModelForImageClassification,
    CLIPConfig,
    CLIPTextConfig,
    CLIPTextModel,
    T5Config,
    T5EncoderModel,
    ViTConfig,
    ViTForImageClassification,
)

from generation.residency import (
    GIB,
    Components,
    NotEnoughGpuMemory,
    ParkedModule,
    Swap,
    Transfer,
    TransformerBytes,
    checkpoint_bytes,
    fp8_bytes,
    linear_shapes,
    measure_copy_rate,
    module_bytes,
    plan_residency,
    slot_pair_bytes,
    switch_line,
)
from testkit.flux1_models import CLIP_L, FLUX1_DEV_TRANSFORMER, FLUX1_VAE, T5_XXL

# The public configs of the safety models (CompVis/stable-diffusion-safety-checker and
# Falconsai/nsfw_image_detection config.json; ViTConfig's defaults are ViT-base's); the VAE's is in testkit.
SAFETY_CHECKER_VISION = {  # CLIP ViT-L/14
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
}

# Allocatable GPU memory (gpu-plan.md): an 80 GB H100, a 48 GB L40S, an H200, and a 24 GB card.
H100_80GB, L40S_48GB, H200, GPU_24GB = 78.6 * GIB, 44.4 * GIB, 139 * GIB, 22.0 * GIB
COPY_RATE = 50e9  # bytes/s, PCIe gen5


def gib(nbytes: int) -> float:
    return round(nbytes / GIB, 2)


@pytest.fixture(scope="module")
def meta() -> dict[str, torch.nn.Module]:
    """FLUX.1's models at their real configs, on the meta device (no memory), in the dtypes the GPU server holds
    them in: bf16, except the Falcons.ai classifier (loaded without a dtype: its stored float32)."""
    with torch.device("meta"):
        models = {
            "dev": FluxTransformer2DModel(**FLUX1_DEV_TRANSFORMER),
            "schnell": FluxTransformer2DModel(**{**FLUX1_DEV_TRANSFORMER, "guidance_embeds": False}),
            "t5": T5EncoderModel(T5Config(**T5_XXL)),
            "clip": CLIPTextModel(CLIPTextConfig(**CLIP_L)),
            "vae": AutoencoderKL(**FLUX1_VAE),
            "checker": StableDiffusionSafetyChecker(
                CLIPConfig(vision_config=SAFETY_CHECKER_VISION, projection_dim=768)
            ),
        }
        models = {name: model.to(torch.bfloat16) for name, model in models.items()}
        models["classifier"] = ViTForImageClassification(ViTConfig(num_labels=2))
    return models


@pytest.fixture(scope="module")
def components(meta) -> Components:
    small = [meta[name] for name in ("clip", "vae", "checker", "classifier")]
    return Components.from_modules({"dev": meta["dev"], "schnell": meta["schnell"]}, meta["t5"], small)


# Byte accounting at FLUX.1's real configs


def test_real_configs_match_the_gpu_plan(meta, components):
    dev, schnell = components.transformers["dev"], components.transformers["schnell"]
    assert (gib(dev.bf16), gib(dev.fp8), gib(dev.slot_pair)) == (22.17, 11.10, 2.59)
    assert (gib(schnell.bf16), gib(schnell.fp8), gib(schnell.slot_pair)) == (22.15, 11.09, 2.58)
    assert gib(components.t5) == 8.87
    assert gib(components.small) == 1.27  # gpu-plan.md's "≈ 1.28": CLIP-L 0.23, VAE 0.16, checker 0.57, ViT 0.32
    assert module_bytes(meta["dev"]) == dev.bf16  # held in bf16 already
    assert len(linear_shapes(meta["dev"])) == 504


def test_dtype_counts_floating_point_tensors_only(meta):
    clip = meta["clip"]  # its position_ids buffer is int64
    ints = sum(b.numel() * b.element_size() for b in clip.buffers() if not b.is_floating_point())
    assert ints > 0
    assert module_bytes(clip, torch.float32) - ints == 2 * (module_bytes(clip) - ints)


# Headers against loaded models (the tiny stand-ins)

LOADERS = {
    "FLUX.1-dev/transformer": lambda path, dtype: FluxTransformer2DModel.from_pretrained(path, dtype=dtype),
    "FLUX.1-schnell/transformer": lambda path, dtype: FluxTransformer2DModel.from_pretrained(path, dtype=dtype),
    "FLUX.1-dev/text_encoder_2": lambda path, dtype: T5EncoderModel.from_pretrained(path, dtype=dtype),
    "FLUX.1-dev/text_encoder": lambda path, dtype: CLIPTextModel.from_pretrained(path, dtype=dtype),
    "FLUX.1-dev/vae": lambda path, dtype: AutoencoderKL.from_pretrained(path, dtype=dtype),
    "stable-diffusion-safety-checker": lambda path, dtype: StableDiffusionSafetyChecker.from_pretrained(
        path, dtype=dtype
    ),
    "nsfw_image_detection": lambda path, dtype: AutoModelForImageClassification.from_pretrained(path, dtype=dtype),
}


def load(tiny_weights: Path, folder: str, dtype: torch.dtype | None = None) -> torch.nn.Module:
    return LOADERS[folder](tiny_weights / folder, dtype)


def unsaved_bytes(model: torch.nn.Module) -> int:
    """Non-persistent buffers: made by the constructor, never in a checkpoint (CLIP's int64 position_ids)."""
    return sum(
        buffer.numel() * buffer.element_size()
        for module in model.modules()
        for name, buffer in module.named_buffers(recurse=False)
        if name in module._non_persistent_buffers_set
    )


@pytest.mark.parametrize("folder", list(LOADERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_checkpoint_bytes_equal_the_loaded_model(tiny_weights, folder, dtype):
    model = load(tiny_weights, folder, dtype)
    assert checkpoint_bytes(tiny_weights / folder, dtype) == module_bytes(model) - unsaved_bytes(model)


def test_transformer_sizes_from_headers_equal_those_from_the_module(tiny_weights):
    folder = tiny_weights / "FLUX.1-dev/transformer"
    transformer = load(tiny_weights, "FLUX.1-dev/transformer", torch.float32)
    assert sorted(linear_shapes(folder)) == sorted(linear_shapes(transformer))
    assert TransformerBytes.from_checkpoint(folder) == TransformerBytes.from_module(transformer)


def test_components_from_weights_equal_those_from_the_loaded_models(tiny_weights):
    small = [load(tiny_weights, name, torch.bfloat16) for name in list(LOADERS)[3:6]]
    small.append(load(tiny_weights, "nsfw_image_detection"))  # loaded without a dtype, as generation.safety does
    from_modules = Components.from_modules(
        {model: load(tiny_weights, f"FLUX.1-{model}/transformer") for model in ("dev", "schnell")},
        load(tiny_weights, "FLUX.1-dev/text_encoder_2"),
        small,
    )
    from_weights = Components.from_weights(tiny_weights)
    assert from_weights.transformers == from_modules.transformers and from_weights.t5 == from_modules.t5
    assert from_weights.small == from_modules.small - sum(unsaved_bytes(model) for model in small)


def test_fp8_bytes_equal_the_torchao_quantized_transformer(tiny_weights, monkeypatch):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    # quantize_ refuses without an fp8 GPU; the tensors it makes are the same on a CPU.
    monkeypatch.setattr("torchao.quantization.quant_api._check_hardware_support", lambda granularity: None)
    transformer = load(tiny_weights, "FLUX.1-dev/transformer", torch.bfloat16)
    expected = fp8_bytes(transformer)
    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    assert module_bytes(transformer) == expected == fp8_bytes(tiny_weights / "FLUX.1-dev/transformer")


def test_slot_pair_bytes_equal_the_hotswap_slots(tiny_weights):
    from lora_loader.hotswap import _add_slots

    transformer = load(tiny_weights, "FLUX.1-dev/transformer", torch.bfloat16)
    expected = slot_pair_bytes(transformer, rank=4)
    _add_slots(transformer, 4, torch.bfloat16)
    slots = sum(p.numel() * p.element_size() for name, p in transformer.named_parameters() if ".lora_" in name)
    assert slots == expected


def test_checkpoint_bytes_read_the_header_only(tmp_path):
    file = tmp_path / "weights.safetensors"
    tensors = {"a.weight": torch.zeros(300, 200), "a.bias": torch.zeros(300, dtype=torch.bfloat16)}
    save_file(tensors, file)
    (length,) = struct.unpack("<Q", file.read_bytes()[:8])
    os.truncate(file, 8 + length)  # the data section is gone
    assert checkpoint_bytes(file) == 300 * 200 * 4 + 300 * 2
    assert checkpoint_bytes([file], torch.bfloat16) == (300 * 200 + 300) * 2
    assert json.loads(file.read_bytes()[8:])["a.weight"]["shape"] == [300, 200]


# The plan


def test_h200_keeps_everything_resident(components):
    plan = plan_residency(components, H200, fp8_wanted=True, copy_rate=COPY_RATE)
    assert {p.where for p in plan.placements} == {"gpu"}
    assert {"dev fp8", "schnell fp8", "dev bf16", "t5"} <= {p.component for p in plan.placements}
    assert plan.swaps == () and plan.fp8_served
    assert all(plan.swap_for(model, fast) is None for model in ("dev", "schnell") for fast in (False, True))
    assert gib(plan.peak) == 91.48 and plan.peak <= H200


def test_h100_keeps_bf16_resident_and_swaps_fp8_into_one_buffer(components):
    plan = plan_residency(components, H100_80GB, fp8_wanted=True, copy_rate=COPY_RATE)
    assert [plan.where(c) for c in ("dev bf16", "schnell bf16", "t5", "small models", "fp8 buffer")] == ["gpu"] * 5
    assert plan.where("dev fp8") == plan.where("schnell fp8") == "host"
    assert plan.swap_for("dev", go_fast=False) is None and plan.swap_for("schnell", go_fast=False) is None
    swap = plan.swap_for("schnell", go_fast=True)
    assert swap.component == "schnell fp8" and swap.bytes == components.transformers["schnell"].fp8
    assert swap.seconds == pytest.approx(swap.bytes / COPY_RATE)
    assert plan.fp8_served and plan.fp8_reason is None
    assert gib(plan.peak) == 77.81 and plan.peak <= H100_80GB and gib(plan.margin) == 0.79
    assert "  never wait for a swap: dev, schnell" in plan.describe()


def test_h100_without_fp8_keeps_everything_resident(components):
    plan = plan_residency(components, H100_80GB, fp8_wanted=False, copy_rate=COPY_RATE)
    assert plan.swaps == () and not plan.fp8_served and plan.fp8_reason is None
    assert "dev fp8" not in {p.component for p in plan.placements}


def test_l40s_keeps_one_bf16_transformer_and_runs_go_fast_in_bf16(components):
    plan = plan_residency(components, L40S_48GB, fp8_wanted=True, copy_rate=25e9)
    assert plan.where("bf16 buffer") == "gpu" and plan.where("dev bf16") == plan.where("schnell bf16") == "host"
    assert not plan.fp8_served and "does not fit" in plan.fp8_reason
    swap = plan.swap_for("dev", go_fast=True)
    assert swap is plan.swap_for("dev", go_fast=False) and swap.component == "dev bf16"
    assert swap.seconds == pytest.approx(components.transformers["dev"].bf16 / 25e9)
    assert gib(plan.peak) == 39.39 and plan.peak <= L40S_48GB


def test_a_24gb_gpu_is_refused_with_the_minimum(components):
    with pytest.raises(NotEnoughGpuMemory, match=r"at least 39\.39 GiB.* 22\.00 GiB allocatable"):
        plan_residency(components, GPU_24GB, fp8_wanted=True, copy_rate=COPY_RATE)


def test_describe_and_switch_lines(components):
    plan = plan_residency(components, H100_80GB, fp8_wanted=True, copy_rate=COPY_RATE)
    lines = plan.describe()
    assert lines[0] == "Residency plan: bf16 resident, one fp8 buffer (78.60 GiB allocatable on the GPU)"
    assert any(line.startswith("  dev go_fast may wait 0.24 s for dev fp8 (11.10 GiB at 50.0 GB/s)") for line in lines)
    swap = Swap(("dev go_fast",), "dev fp8", 11 * GIB, 0.24)
    line = switch_line("dev fp8", Transfer(11 * GIB, 0.25), swap)
    assert line == "Swapped dev fp8 onto the GPU: 11.00 GiB in 0.25 s (47.2 GB/s); planned 0.24 s"


# Parking


def test_parking_keeps_the_module_its_parameters_and_their_values():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4))
    tensors = dict(module.state_dict(keep_vars=True))
    before = {name: tensor.detach().clone() for name, tensor in tensors.items()}
    pointers = {name: tensor.data_ptr() for name, tensor in tensors.items()}
    parked = ParkedModule(module, "cpu", read_only=lambda name: name.endswith("weight"))

    moves = [parked.park(), parked.unpark(), parked.park()]
    assert [move.bytes for move in moves[:2]] == [module_bytes(module)] * 2
    assert moves[2].bytes == module_bytes(module) - 4 * (8 * 4 + 4)  # read-only weights are not copied back
    assert all(move.seconds >= 0 for move in moves) and parked.parked
    for name, tensor in module.state_dict(keep_vars=True).items():
        assert tensor is tensors[name]  # the same objects
        assert tensor.data_ptr() != pointers[name]  # holding other storage
        assert torch.equal(tensor, before[name])


def test_parking_a_float8_weight_moves_its_inner_tensors():
    from torchao.quantization import Float8Tensor, PerRow

    linear = torch.nn.Linear(64, 32, dtype=torch.bfloat16)
    expected_bytes = fp8_bytes(linear)
    linear.weight = torch.nn.Parameter(Float8Tensor.from_hp(linear.weight.detach(), granularity=PerRow()), False)
    weight, qdata = linear.weight, linear.weight.qdata
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    output = linear(x)
    assert module_bytes(linear) == expected_bytes

    parked = ParkedModule(linear, "cpu")
    assert parked.park().bytes == parked.unpark().bytes == expected_bytes
    assert linear.weight is weight and linear.weight.qdata is not qdata
    assert torch.equal(linear(x), output)


def test_copy_rate_is_measured():
    assert measure_copy_rate("cpu", nbytes=2**20, repeats=1) > 0
