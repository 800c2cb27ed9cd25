"""go_fast routing in the service, on CPU: an "fp8" execution path whose transformers are plain tiny ones with
LoRA slots (fp8 matmuls and compiling need a GPU) stands in for the fp8 models, so what is tested is the
service's choice of models, that a LoRA scale means the same on that path (GO_FAST_LORA_MULTIPLIER, 1.0), and the
fallback for a LoRA that cannot be hotswapped.

The two paths compute the same image by different routes (hotswap slots padded to a rank vs peft adapters), so
their float32 results differ in the last bits and the 8-bit pixels by a grey level here and there, and by how
much depends on the CPU. They are compared as decoded pixels: at most 2 grey levels anywhere and a mean under
0.05, while moving the LoRA scale from 0.4 to 0.6 changes the image by far more; so "equal within rounding" is
told apart from "another scale" with a wide margin on any machine."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from generation.execution import ExecutionPath, ExecutionPaths
from generation.loras import GO_FAST_LORA_MULTIPLIER, LoraStage
from generation.pipelines import FluxModels
from generation.request import GenerationRequest, LoraChoice
from generation.service import GenerationService
from lora_loader.hotswap import HotswapAdapterManager
from testkit import lora_fixtures
from testkit.fakes.lora_servers import FakeServer
from weights.layout import FLUX_DEV, FLUX_SCHNELL


@pytest.fixture(scope="module")
def fast_service(service, tiny_weights):
    fast_models = FluxModels.load(
        tiny_weights / FLUX_DEV.name, tiny_weights / FLUX_SCHNELL.name, torch.device("cpu"), torch.float32
    )
    hotswap = HotswapAdapterManager(fast_models)
    hotswap.prepare(("dev", "schnell"), max_rank=16)
    fp8 = ExecutionPath("fp8", fast_models, hotswap, GO_FAST_LORA_MULTIPLIER, False, "fp8 stand-in, LoRAs in slots")
    paths = ExecutionPaths(service.paths.plain, fp8=fp8)  # the session service's own plain path and adapters
    yield GenerationService(service.settings, service.safety, LoraStage(service.loras.fetcher, paths))
    paths.plain.adapters.empty()


@pytest.fixture(scope="module")
def lora_urls(service, tmp_path_factory):
    pipe = service.models.pipeline("dev", "txt2img")
    shapes = lora_fixtures.linear_shapes(pipe.transformer), lora_fixtures.linear_shapes(pipe.text_encoder)
    folder = tmp_path_factory.mktemp("routing-loras")
    with FakeServer() as site:
        urls = {}
        for name, fmt in (("transformer", "diffusers"), ("with_clip", "kohya_text_encoder")):
            data = lora_fixtures.write_fixture(fmt, folder, *shapes, seed=7).path.read_bytes()
            urls[name] = site.add_file(f"/{name}.safetensors", data)
        yield urls


def render(service, **fields):
    fields = dict(
        prompt="a photo of TOK",
        num_inference_steps=2,
        megapixels="0.25",
        seed=3,
        output_format="png",
        disable_safety_checker=True,
        **fields,
    )
    [path] = service.generate(GenerationRequest(**fields)).paths
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"), dtype=np.int16)


def assert_same_within_rounding(a: np.ndarray, b: np.ndarray) -> None:
    difference = np.abs(a - b)
    assert difference.max() <= 2 and difference.mean() < 0.05, (int(difference.max()), float(difference.mean()))


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_go_fast_runs_the_fast_models_and_a_scale_means_the_same(fast_service, lora_urls, caplog):
    caplog.set_level("INFO")
    lora = lora_urls["transformer"]
    fast = render(fast_service, go_fast=True, main_lora=LoraChoice(lora, 0.4))
    assert any(r.getMessage() == "Execution path fp8: go_fast: fp8 stand-in, LoRAs in slots" for r in caplog.records)
    plain_at_0_4 = render(fast_service, go_fast=False, main_lora=LoraChoice(lora, 0.4))
    plain_at_0_6 = render(fast_service, go_fast=False, main_lora=LoraChoice(lora, 0.6))
    assert_same_within_rounding(fast, plain_at_0_4)
    assert mean_difference(fast, plain_at_0_6) > 20 * mean_difference(fast, plain_at_0_4) + 1.0, "not x1.5"


def test_custom_size_with_go_fast_runs_plain_and_says_so(fast_service, caplog):
    caplog.set_level("INFO")
    render(fast_service, go_fast=True, aspect_ratio="custom", width=256, height=256)
    assert any("custom sizes run in bf16" in r.getMessage() for r in caplog.records)


def test_custom_is_ignored_with_an_input_image_so_go_fast_still_runs(fast_service, tmp_path, caplog):
    caplog.set_level("INFO")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (96, 64), "gray").save(photo)
    render(fast_service, go_fast=True, aspect_ratio="custom", image=photo, prompt_strength=0.9)
    assert any(r.getMessage() == "Execution path fp8: go_fast: fp8 stand-in, LoRAs in slots" for r in caplog.records)


def test_a_lora_that_cannot_be_hotswapped_runs_plain_with_plain_scales(fast_service, lora_urls, caplog):
    caplog.set_level("INFO")
    lora = lora_urls["with_clip"]  # CLIP layers: not in the compiled transformer's slots
    fallback = render(fast_service, go_fast=True, main_lora=LoraChoice(lora, 0.5))
    assert any(
        r.getMessage().startswith("Execution path plain: LoRA ") and "running float32, uncompiled" in r.getMessage()
        for r in caplog.records
    )
    assert fast_service.paths.fp8.adapters.resident == (), "the compiled path's slots were emptied"
    assert_same_within_rounding(fallback, render(fast_service, go_fast=False, main_lora=LoraChoice(lora, 0.5)))
