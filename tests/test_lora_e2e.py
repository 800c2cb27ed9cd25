"""LoRAs end to end through the real Cog server: fetched from fake Replicate / Hugging Face / CivitAI sites on
loopback, attached to the tiny model, swapped between predictions, and TrainedPredictor's own weights."""

from __future__ import annotations

import base64
import io

import httpx2
import numpy as np
import pytest
from PIL import Image

from generation.request import GenerationRequest, LoraChoice
from generation.service import GenerationService
from serverconfig import ServerConfig
from testkit import lora_fixtures
from testkit.cog_server import REPO_ROOT, CogServer
from testkit.fakes.lora_servers import FakeVersion, trainer_tar
from testkit.helpers import digest
from testkit.lora_sites import LoraSites

BASE = {"prompt": "a photo of TOK", "num_inference_steps": 2, "megapixels": "0.25", "seed": 5, "output_format": "png"}


@pytest.fixture(scope="module")
def lora_files(service, tmp_path_factory) -> dict[str, bytes]:
    """Three different LoRAs for the tiny transformer, in the formats users bring most."""
    folder = tmp_path_factory.mktemp("e2e-loras")
    pipe = service.models.pipeline("dev", "txt2img")
    shapes = lora_fixtures.linear_shapes(pipe.transformer), lora_fixtures.linear_shapes(pipe.text_encoder)
    return {
        name: lora_fixtures.write_fixture(fmt, folder, *shapes, seed=seed).path.read_bytes()
        for name, fmt, seed in (("trained", "ai_toolkit", 1), ("hf", "diffusers", 2), ("civitai", "kohya", 3))
    }


@pytest.fixture(scope="module")
def sites(lora_sites: LoraSites, lora_files) -> LoraSites:
    lora_sites.replicate.add_model("alice", "flux-tok", trainer_tar(lora_files["trained"], trigger_word="TOK"))
    lora_sites.hub.add_repo("bob/flux-style", {"lora.safetensors": lora_files["hf"], "README.md": b"# style"})
    civitai_version = FakeVersion(id=5678, content=lora_files["civitai"], trained_words=["pixelart"])
    lora_sites.civitai.add_model(1234, [civitai_version])
    hostile = FakeVersion(
        id=8765,
        content=lora_files["civitai"],
        trained_words=["pix\nError: forged trigger\x1b[2J"],
        base_model="SDXL 1.0\r\nError: forged base model",
    )
    lora_sites.civitai.add_model(4321, [hostile], name="x" * 5000)
    lora_sites.files.add_page("/not-a-lora.safetensors", b"<!DOCTYPE html><html>Sign in</html>")
    return lora_sites


def _env(tiny_env, sites: LoraSites) -> dict[str, str]:
    return {**tiny_env, **sites.env()}


@pytest.fixture(scope="module")
def server(tiny_env, sites, tmp_path_factory):
    running = CogServer(_env(tiny_env, sites), log_path=tmp_path_factory.mktemp("srv") / "server.log").start()
    yield running
    running.stop()


def predict(server, **inputs) -> dict:
    response = server.predict(**{**BASE, **inputs})
    assert response.status_code == 200, response.text
    return response.json()


def pixels(body: dict) -> np.ndarray:
    assert body["status"] == "succeeded", body
    payload = body["output"][0].partition(",")[2]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))), dtype=float)


def test_every_source_changes_the_image_and_scale_zero_is_the_base(server):
    base = pixels(predict(server))
    for source in ("alice/flux-tok", "huggingface.co/bob/flux-style", "https://civitai.com/models/1234/pixel-art"):
        with_lora = pixels(predict(server, replicate_weights=source))
        assert np.abs(with_lora - base).mean() > 0.5, source
        assert np.array_equal(pixels(predict(server, replicate_weights=source, lora_scale=0)), base), source


def test_main_and_extra_together_and_swapped_match_a_fresh_server(server, tiny_env, sites, tmp_path):
    a, b = "alice/flux-tok", "huggingface.co/bob/flux-style"
    sequence = [
        {"replicate_weights": a, "extra_lora": b, "lora_scale": 0.7, "extra_lora_scale": 0.4},
        {},
        {"replicate_weights": b, "extra_lora": a, "lora_scale": 0.4, "extra_lora_scale": 0.7},
        {"replicate_weights": a, "lora_scale": 1.3, "model": "schnell"},
    ]
    warm = [pixels(predict(server, **request)) for request in sequence]
    assert np.abs(warm[0] - warm[2]).max() < 2, "A*0.7+B*0.4 must not depend on which slot holds which"
    for index, (request, image) in enumerate(zip(sequence, warm, strict=True)):
        # A fresh service for each request: the same code and configuration as a freshly started server, without
        # the server's start-up. Within rounding, not bit for bit: a warm server may hold the two adapters in the
        # other order (peft sums their outputs in that order), and this process may run other thread counts. A
        # LoRA left behind or a wrong scale moves far more pixels.
        difference = np.abs(fresh_render(_env(tiny_env, sites), tmp_path / str(index), request) - image)
        assert difference.max() <= 2 and difference.mean() < 0.05, (request, difference.max(), difference.mean())


def fresh_render(env: dict[str, str], folder, inputs: dict) -> np.ndarray:
    config = ServerConfig.from_env(env, lora_cache_dir=folder / "loras", temp_dir=folder / "tmp")
    fields = {**BASE, **inputs}
    main = LoraChoice.of(fields.pop("replicate_weights", None), fields.pop("lora_scale", 1.0))
    extra = LoraChoice.of(fields.pop("extra_lora", None), fields.pop("extra_lora_scale", 1.0))
    request = GenerationRequest(**fields, main_lora=main, extra_lora=extra)
    [path] = GenerationService.from_config(config).generate(request).paths
    return np.asarray(Image.open(path), dtype=float)


def test_a_cached_lora_costs_no_request_and_an_attached_one_no_reload(server, sites):
    predict(server, replicate_weights="alice/flux-tok")
    sites.clear_requests()
    body = predict(server, replicate_weights="alice/flux-tok", lora_scale=0.5)
    assert body["status"] == "succeeded"
    assert sites.requests == []


def test_trigger_word_hint_only_when_the_prompt_lacks_it(server):
    without = predict(server, replicate_weights="alice/flux-tok", prompt="a portrait")
    with_word = predict(server, replicate_weights="alice/flux-tok", prompt="a portrait of TOK")
    assert "trigger word 'TOK'" in without["logs"]
    assert "trigger word" not in with_word["logs"]


def test_upstream_text_cannot_forge_log_lines(server):
    """Trigger words and model facts come from the LoRA's site: they are escaped and capped in the logs."""
    body = predict(server, replicate_weights="https://civitai.com/models/4321", prompt="a photo")
    assert body["status"] == "succeeded", body
    lines = body["logs"].splitlines()
    assert not [line for line in lines if "forged" in line and not line.startswith(("LoRA ", "Warning: LoRA "))]
    assert any("pix\\nError: forged trigger\\x1b[2J" in line for line in lines), body["logs"]
    assert any("SDXL 1.0\\r\\nError: forged base model" in line for line in lines), body["logs"]
    assert "\x1b" not in body["logs"] and max(len(line) for line in lines) <= 2100


def test_bad_loras_fail_clearly_and_the_server_stays_ready(server, sites):
    cases = {
        sites.files.url("/not-a-lora.safetensors"): "HTML",
        "civitai.com/models/999": "CivitAI",
        "not a lora string": "Replicate",
    }
    for source, fragment in cases.items():
        body = predict(server, replicate_weights=source)
        assert body["status"] == "failed" and fragment in body["error"], (source, body["error"])
        assert server.health()["status"] == "READY"
    assert predict(server, replicate_weights="alice/flux-tok")["status"] == "succeeded"


def test_trained_predictor_serves_its_own_weights(tiny_env, sites, tmp_path):
    """The 20-input schema with COG_WEIGHTS, started as users start it: `script/serve --target ...`."""
    env = {**_env(tiny_env, sites), "COG_WEIGHTS": sites.replicate.weights_url("alice", "flux-tok")}
    target = "predict.py:TrainedPredictor"
    server = CogServer(env, target=target, log_path=tmp_path / "trained.log", via_script=True)
    committed = (REPO_ROOT / ".cog/openapi_schema.json").read_bytes()
    server.start()
    try:
        # Not the setup's last line: coglet may leave that one out of the health answer's setup logs.
        assert "Preloading the LoRA given at setup" in server.health()["setup"]["logs"]
        trained = predict(server)
        served = httpx2.get(f"{server.url}/openapi.json").json()["components"]["schemas"]["Input"]["properties"]
    finally:
        server.stop()
    assert trained["status"] == "succeeded", trained
    [lora] = trained["metrics"]["loras"]
    assert lora["attach"] == "rescaled", "setup attached the trained LoRA; the request only re-scales it"
    assert len(served) == 20 and "replicate_weights" not in served
    assert digest((REPO_ROOT / ".cog/openapi_schema.json").read_bytes()) == digest(committed), (
        "the tracked schema is not touched"
    )
