"""The residency plan carried out (generation/placement.py), on CPU with the tiny models.

The plans are made by `residency.plan_residency` from the tiny models' own byte counts, with a "GPU" sized so that
the plan under test is the one chosen (the tiny models are a few MB, so the activation headroom is scaled down
with them). On a CPU "host memory" and "the device" are the same RAM, but the tensors really move (new storage
each way), so what is tested is the bookkeeping a GPU relies on: which transformer waits where, that a request
for the other model swaps it in and parks the first, that the swap time is returned in the result, and that
images do not change.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from generation import residency
from generation.logs import StageTimes
from generation.loras import LoraStage
from generation.pipelines import FluxModels
from generation.placement import WeightPlacement
from generation.request import GenerationRequest
from generation.service import GenerationService
from generation.setup_paths import build_paths
from serverconfig import ServerConfig
from weights.layout import FLUX_DEV, FLUX_SCHNELL

HEADROOM = 2**20


def tiny_models(tiny_weights) -> FluxModels:
    return FluxModels.load(
        tiny_weights / FLUX_DEV.name, tiny_weights / FLUX_SCHNELL.name, torch.device("cpu"), torch.float32
    )


def components(models: FluxModels) -> residency.Components:
    pipe = models.pipeline("dev", "txt2img")
    sizes = residency.Components.from_modules(
        {model: models.transformer(model) for model in ("dev", "schnell")},
        pipe.text_encoder_2,
        [pipe.text_encoder, pipe.vae],
    )
    return residency.Components(sizes.transformers, sizes.t5, sizes.small, headroom=HEADROOM)


def one_bf16_plan(sizes: residency.Components) -> residency.ResidencyPlan:
    """The 48 GB plan: room for one bf16 transformer (the larger) and the rest, not for two."""
    one = max(t.bf16 + t.slot_pair for t in sizes.transformers.values())
    budget = one + sizes.t5 + sizes.small + HEADROOM
    plan = residency.plan_residency(sizes, budget, fp8_wanted=True, copy_rate=1e9)
    assert plan.name == "one bf16 transformer resident"
    return plan


@pytest.fixture
def parked_service(service, tiny_weights, tmp_path):
    models = tiny_models(tiny_weights)
    placement = WeightPlacement(one_bf16_plan(components(models)), torch.device("cpu"))
    config = ServerConfig(weights_dir=tiny_weights, device="cpu", dtype="float32", compile="off")
    paths = build_paths(models, config, StageTimes(), placement)
    return GenerationService(service.settings, service.safety, LoraStage(service.loras.fetcher, paths)), placement


def pixels(result) -> np.ndarray:
    [path] = result.paths
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"), dtype=np.int16)


def run(service, model: str):
    fields = dict(prompt="a photo of TOK", num_inference_steps=2, megapixels="0.25", seed=4, output_format="png")
    return service.generate(GenerationRequest(model=model, disable_safety_checker=True, **fields))


def test_one_transformer_on_the_gpu_the_other_swapped_in_when_asked(parked_service, service, caplog):
    caplog.set_level("INFO")
    parked, placement = parked_service
    assert placement.on_host("dev", "bf16") and placement.on_host("schnell", "bf16")
    assert "an fp8 transformer does not fit" in placement.fp8_reason

    first = run(parked, "dev")
    assert "weights_swap" in first.stage_seconds, "dev waited in host memory until asked for"
    again = run(parked, "dev")
    assert "weights_swap" not in again.stage_seconds, "already on the device"
    other = run(parked, "schnell")
    assert "weights_swap" in other.stage_seconds
    assert any(r.getMessage().startswith("Swapped FLUX.1 [schnell] bf16 onto the GPU") for r in caplog.records)
    modules = {model: placement._modules[(model, "bf16")] for model in ("dev", "schnell")}
    assert (modules["dev"].parked, modules["schnell"].parked) == (True, False), "one at a time"

    for result, model in ((first, "dev"), (other, "schnell")):
        difference = np.abs(pixels(result) - pixels(run(service, model)))
        assert difference.max() <= 2, "the same weights after their trips"


def test_everything_fits_nothing_moves(tiny_weights):
    models = tiny_models(tiny_weights)
    sizes = components(models)
    plan = residency.plan_residency(sizes, 10 * 2**30, fp8_wanted=True, copy_rate=1e9)
    placement = WeightPlacement(plan, torch.device("cpu"))
    for model in ("dev", "schnell"):
        placement.register(model, "bf16", models.transformer(model))
        assert not placement.on_host(model, "bf16")
        assert placement.ensure(model, "bf16") == 0.0
    assert placement.fp8_reason is None


def test_no_plan_on_a_cpu(tiny_weights):
    placement = WeightPlacement.for_device(tiny_weights, torch.device("cpu"), fp8_wanted=False)
    assert placement.plan is None and not placement.on_host("dev", "bf16") and placement.ensure("dev", "bf16") == 0
