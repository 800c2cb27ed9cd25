"""The compiled bf16 path through the service, on CPU: no request recompiles, and it renders what the plain path
renders.

The path is built as setup builds it (slots, `compile_repeated_blocks(fullgraph=True, dynamic=True)`, a warm-up
at one size), with torch.compile's "eager" backend: recompiles are decided by dynamo's guards, which are the same
for every backend, and inductor would spend minutes compiling on a CPU. After the warm-up, a sequence runs under
`torch._dynamo.config.patch(error_on_recompile=True)`: every named size at both megapixel settings (transformer
and scheduler only, as the setup warm-up runs them), then requests through the service: custom sizes, img2img
and inpainting inputs from 1440x1440 down to 16x16 and 8x8 (a single image token, which runs uncompiled and says
so), LoRA swaps, re-scales, two LoRAs, none, a model switch, go_fast (no fp8 path on a CPU: it runs here and says
why), and a LoRA with CLIP layers that the slots cannot take (it runs on the plain path over the same modules,
and the compiled path runs again afterwards without recompiling).

Images are compared with the plain-only session service as decoded pixels: the slots pad ranks with zeros and
sum in another order, so float32 results differ in the last bits (see test_fast_path_routing.py for the
tolerance and why it is enough).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch._dynamo.utils import counters

from generation import compiled_path
from generation.compiled_path import build_compiled_path
from generation.execution import ExecutionPaths
from generation.loras import LoraStage
from generation.pipelines import FluxModels
from generation.request import GenerationRequest, LoraChoice
from generation.service import GenerationService
from generation.setup_paths import plain_path
from testkit import lora_fixtures
from testkit.fakes.lora_servers import FakeServer
from weights.layout import FLUX_DEV, FLUX_SCHNELL

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")


@pytest.fixture(scope="module")
def compiled_service(service, tiny_weights):
    torch._dynamo.reset()
    models = FluxModels.load(
        tiny_weights / FLUX_DEV.name, tiny_weights / FLUX_SCHNELL.name, torch.device("cpu"), torch.float32
    )
    compiled = build_compiled_path(models, backend="eager", max_rank=16, warm_up_sizes=[(256, 256)])
    paths = ExecutionPaths(plain_path(models), compiled, unavailable={"fp8": "fp8 needs a CUDA GPU"})
    yield GenerationService(service.settings, service.safety, LoraStage(service.loras.fetcher, paths))
    service.loras.paths.plain.adapters.apply("dev", None, None)  # the session service as other tests expect it
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def lora_urls(service, tmp_path_factory):
    pipe = service.models.pipeline("dev", "txt2img")
    shapes = lora_fixtures.linear_shapes(pipe.transformer), lora_fixtures.linear_shapes(pipe.text_encoder)
    folder = tmp_path_factory.mktemp("compiled-loras")
    fixtures = {"A": ("diffusers", 1), "B": ("kohya_all_layers", 2), "TE": ("kohya_text_encoder", 3), "X": ("xlabs", 4)}
    with FakeServer() as site:
        urls = {}
        for name, (fmt, seed) in fixtures.items():
            data = lora_fixtures.write_fixture(fmt, folder, *shapes, seed=seed).path.read_bytes()
            urls[name] = site.add_file(f"/{name}.safetensors", data)
        yield urls


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"), dtype=np.int16)


def run(service, **fields):
    fields = dict(prompt="a photo of TOK", num_inference_steps=1, seed=5, output_format="png", **fields)
    return service.generate(GenerationRequest(disable_safety_checker=True, **fields))


def input_image(folder, size) -> str:
    path = folder / f"in-{size[0]}x{size[1]}.png"
    Image.new("RGB", size, (120, 90, 60)).save(path)
    return path


def requests(urls, folder) -> list[tuple[dict, str]]:
    """(request fields, the path it must report), in an order that swaps, re-scales and switches models."""
    a, b, te = (LoraChoice(urls[k], s) for k, s in (("A", 0.8), ("B", 0.6), ("TE", 0.7)))
    images = [
        ((1440, 1440), "compiled"),
        ((300, 200), "compiled"),
        ((32, 16), "compiled"),
        ((16, 16), "compiled+eager"),
    ]
    mask = input_image(folder, (64, 48))
    return [
        ({"aspect_ratio": "16:9", "megapixels": "1"}, "compiled"),
        ({"aspect_ratio": "9:21", "megapixels": "0.25"}, "compiled"),
        ({"aspect_ratio": "custom", "width": 300, "height": 260}, "compiled"),
        ({"aspect_ratio": "custom", "width": 1440, "height": 256}, "compiled"),
        *[({"image": input_image(folder, size), "prompt_strength": 1.0}, path) for size, path in images],
        ({"image": mask, "mask": mask, "prompt_strength": 1.0}, "compiled"),
        ({"main_lora": a, "megapixels": "0.25"}, "compiled"),
        ({"main_lora": LoraChoice(urls["A"], 0.3), "megapixels": "0.25"}, "compiled"),
        ({"main_lora": a, "extra_lora": b, "megapixels": "0.25"}, "compiled"),
        ({"main_lora": LoraChoice(urls["X"], 0.9), "model": "schnell", "megapixels": "0.25"}, "compiled"),
        ({"main_lora": te, "megapixels": "0.25"}, "plain"),
        ({"model": "schnell", "megapixels": "0.25"}, "compiled"),  # empties the plain adapters off dev
        ({"megapixels": "0.25"}, "compiled"),  # dev, no LoRA anywhere: its slots must be armed again all the same
        ({"main_lora": b, "go_fast": True, "megapixels": "0.25"}, "compiled"),
        ({"image": input_image(folder, (8, 8)), "main_lora": a, "prompt_strength": 1.0}, "compiled+eager"),
        ({"megapixels": "0.25"}, "compiled"),
    ]


def test_no_request_recompiles(compiled_service, lora_urls, tmp_path):
    graphs = counters["stats"]["unique_graphs"]
    taken = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        # Every named size at both megapixel settings, as the setup warm-up renders them on a GPU (latents only:
        # sizes matter to the transformer, and decoding 1 MP images would be most of this test's time); dev only,
        # since a size is the same to both models' blocks, and schnell runs in the requests below.
        compiled_path.warm_up(compiled_service.paths.compiled, compiled_path.named_sizes(), models=("dev",))
        for fields, _ in requests(lora_urls, tmp_path):
            result = run(compiled_service, **fields)
            taken.append(result.path)
    assert taken == [path for _, path in requests(lora_urls, tmp_path)]
    assert counters["stats"]["unique_graphs"] == graphs, "a request compiled a new graph"


@pytest.mark.parametrize(
    "fields",
    [
        {"main_lora": "A", "extra_lora": "B"},
        {"main_lora": "TE"},
        {"image": (16, 16)},
    ],
    ids=["two loras in slots", "clip lora on the plain path", "single token uncompiled"],
)
def test_renders_what_the_plain_path_renders(compiled_service, service, lora_urls, tmp_path, fields):
    fields = dict(fields)
    for role in ("main_lora", "extra_lora"):
        if role in fields:
            fields[role] = LoraChoice(lora_urls[fields[role]], 0.7)
    if "image" in fields:
        fields.update(image=input_image(tmp_path, fields["image"]), prompt_strength=1.0)
    fields.setdefault("megapixels", "0.25")
    [compiled] = run(compiled_service, **fields).paths
    [plain] = run(service, **fields).paths
    difference = np.abs(pixels(compiled) - pixels(plain))
    assert difference.max() <= 2 and difference.mean() < 0.05, (int(difference.max()), float(difference.mean()))
