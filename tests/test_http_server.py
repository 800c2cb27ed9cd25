"""The real Cog HTTP server on the tiny weights: health, outputs, validation, failures, recovery."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from testkit.cog_server import CogServer


@pytest.fixture(scope="module")
def server(tiny_env, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "cog-server.log"
    running = CogServer(tiny_env, log_path=log).start()
    yield running
    running.stop()


def decode(data_uri: str) -> Image.Image:
    header, _, payload = data_uri.partition(",")
    assert header.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def succeeded(response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded", body
    return body


def failed(response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "failed", body
    return body["error"]


def test_health_is_ready_and_schema_is_served(server):
    assert server.health()["status"] == "READY"
    schema = httpx.get(f"{server.url}/openapi.json").json()
    properties = schema["components"]["schemas"]["Input"]["properties"]
    assert sorted(properties, key=lambda name: properties[name]["x-order"])[17] == "replicate_weights"


@pytest.mark.parametrize(
    ("inputs", "count", "fmt", "size"),
    [
        ({"num_outputs": 2, "megapixels": "0.25", "aspect_ratio": "16:9"}, 2, "WEBP", (672, 384)),
        ({"output_format": "png", "megapixels": "0.25", "model": "schnell"}, 1, "PNG", (512, 512)),
        ({"output_format": "jpg", "aspect_ratio": "custom", "width": 300, "height": 260}, 1, "JPEG", (304, 256)),
    ],
)
def test_prediction_returns_files_of_the_right_format_and_size(server, inputs, count, fmt, size):
    body = succeeded(server.predict(prompt="a photo of TOK", num_inference_steps=2, seed=1, **inputs))
    images = [decode(item) for item in body["output"]]
    assert len(images) == count
    assert {(image.format, image.size) for image in images} == {(fmt, size)}
    assert "Using seed: 1" in body["logs"]


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"num_outputs": 5}, "num_outputs"),
        ({"width": 9999, "aspect_ratio": "custom"}, "width"),
        ({"lora_scale": 3.5}, "lora_scale"),
        ({"aspect_ratio": "7:3"}, "aspect_ratio"),
        ({"output_format": "gif"}, "output_format"),
        ({"num_inference_steps": "many"}, "num_inference_steps"),
    ],
)
def test_invalid_inputs_get_422_naming_the_field(server, inputs, field):
    response = server.predict(prompt="x", **inputs)
    assert response.status_code == 422, response.text
    assert [d["loc"] for d in response.json()["detail"]] == [["body", "input", field]]


def test_missing_prompt_gets_422(server):
    response = server.predict(seed=1)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "prompt"


def test_clear_failures_leave_the_server_ready(server):
    mask = "data:image/png;base64," + base64.b64encode(_png_bytes()).decode()
    error = failed(server.predict(prompt="x", mask=mask, num_inference_steps=1))
    assert "mask was given without image" in error
    assert server.health()["status"] == "READY"
    error = failed(server.predict(prompt="x", aspect_ratio="custom", height=512, num_inference_steps=1))
    assert "width is not set" in error
    assert server.health()["status"] == "READY"
    succeeded(server.predict(prompt="x", num_inference_steps=1, megapixels="0.25"))


def test_img2img_over_http(server):
    image = "data:image/png;base64," + base64.b64encode(_png_bytes((200, 100))).decode()
    body = succeeded(server.predict(prompt="x", image=image, num_inference_steps=2, output_format="png"))
    assert decode(body["output"][0]).size == (208, 112)


def _png_bytes(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (255, 255, 255)).save(buffer, format="PNG")
    return buffer.getvalue()
