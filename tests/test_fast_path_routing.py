"""go_fast routing in the service, on CPU: a FastPath whose transformers are plain tiny ones (fp8 and compile
need a GPU) stands in for the fp8 models, so what is tested is the service's choice of models, that a LoRA scale
means the same on that path (multiplier 1.0), and the fallback for a LoRA that cannot be hotswapped.

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

from generation.fast_path import FastPath
from generation.loras import LoraStage
from generation.pipelines import FluxModels
from generation.request import GenerationRequest, LoraChoice
from generation.service import GenerationService
from lora_loader.adapters import AdapterManager
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
    loras = LoraStage(service.loras.fetcher, AdapterManager(service.models), hotswap)
    fast = FastPath(fast_models, hotswap)
    yield GenerationService(service.settings, service.models, service.safety, loras, fast)
    loras.plain.apply("dev", None, None)


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
    assert any(r.getMessage() == "go_fast: running the fp8 transformer, compiled" for r in caplog.records)
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
    assert any(r.getMessage() == "go_fast: running the fp8 transformer, compiled" for r in caplog.records)


def test_a_lora_that_cannot_be_hotswapped_runs_plain_with_plain_scales(fast_service, lora_urls, caplog):
    caplog.set_level("INFO")
    lora = lora_urls["with_clip"]  # CLIP layers: not in the compiled transformer's slots
    fallback = render(fast_service, go_fast=True, main_lora=LoraChoice(lora, 0.5))
    assert any("this request runs the plain path" in r.getMessage() for r in caplog.records)
    assert fast_service.fast.adapters.resident == (), "the compiled path's slots were emptied"
    assert_same_within_rounding(fallback, render(fast_service, go_fast=False, main_lora=LoraChoice(lora, 0.5)))


def test_the_memory_check_counts_the_lora_slots_it_will_add(fast_service, tiny_weights):
    """Setup refuses the fp8 path (and falls back) when the GPU lacks room for it, so the estimate must cover
    what the build adds: it reads the Linear shapes from the checkpoint's header alone, and the two LoRA slots
    it counts are at least what hotswap really adds."""
    from generation import fast_path

    folder = tiny_weights / FLUX_DEV.name
    transformer = fast_service.fast.models.transformer("dev")
    slots = [p for name, p in transformer.named_parameters() if ".lora_" in name]
    added = sum(p.numel() * 2 for p in slots) * fast_path.MAX_LORA_RANK // 16  # bf16 at the production rank
    estimate = fast_path._slot_bytes(folder)
    assert estimate >= added
    assert estimate <= 1.2 * added, "close enough to be worth checking"
    loaded = FluxModels.load(folder, tiny_weights / FLUX_SCHNELL.name, torch.device("cpu"), torch.float32)
    assert estimate == fast_path._slot_bytes(loaded.transformer("dev")), "from the header as from the model"
