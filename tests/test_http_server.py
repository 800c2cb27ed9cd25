"""The real Cog HTTP server on the tiny weights: health, outputs, validation, failures, recovery, the metrics a
prediction records, logs free of library warnings, and several requests: back to back, at once, cancelled."""

from __future__ import annotations

import base64
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
from PIL import Image

from testkit.cog_server import Webhooks
from testkit.fakes.lora_servers import FakeServer
from testkit.helpers import digest
from testkit.lora_sites import tiny_lora_bytes, tiny_lora_shapes

# What Python's warnings and libraries' notices look like in a log: a category, a deprecation, a source path.
LIBRARY_NOISE = re.compile(r"Warning|deprecat|\.py:\d+|Failed to load|Enum subclass", re.IGNORECASE)


@pytest.fixture(scope="module")
def server(tiny_server):
    return tiny_server


@pytest.fixture(scope="module")
def two_loras(tiny_weights, tmp_path_factory):
    """URLs of two LoRAs that fit the tiny model, on a fake file site."""
    folder = tmp_path_factory.mktemp("http-loras")
    shapes = tiny_lora_shapes(tiny_weights)
    with FakeServer() as site:
        yield [
            site.add_file(f"/{fmt}.safetensors", tiny_lora_bytes(shapes, fmt, folder, seed))
            for fmt, seed in (("diffusers", 1), ("kohya", 2))
        ]


def decode(data_uri: str) -> Image.Image:
    header, _, payload = data_uri.partition(",")
    assert header.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def succeeded(response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded", body
    return body


def output_digests(body: dict) -> list[str]:
    return [digest(item.encode()) for item in body["output"]]


def failed(response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "failed", body
    return body["error"]


def test_health_is_ready_and_schema_is_served(server):
    assert server.health()["status"] == "READY"
    schema = httpx2.get(f"{server.url}/openapi.json").json()
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


def test_setup_logs_are_complete_and_free_of_library_notices(server):
    """Cog's deprecation warnings (BasePredictor, predict()) and torchao's import notices are gone, and the
    setup's last lines reach /health-check (coglet drops lines still in flight when setup returns)."""
    setup_logs = server.health()["setup"]["logs"]
    assert "Setup took" in setup_logs
    assert not LIBRARY_NOISE.search(setup_logs), LIBRARY_NOISE.search(setup_logs)


def test_two_loras_record_metrics_and_log_no_library_warnings(server, two_loras):
    main, extra = two_loras
    inputs = dict(prompt="x", num_inference_steps=2, megapixels="0.25", seed=5, extra_lora_scale=0.5)
    body = succeeded(server.predict(**inputs, replicate_weights=main, extra_lora=extra))
    metrics = body["metrics"]
    assert {k: metrics[k] for k in ("seed", "steps", "path", "lora_adapters_resident")} == {
        "seed": 5,
        "steps": 2,
        "path": "plain",
        "lora_adapters_resident": 2,
    }
    events = [(lora["role"], lora["scale"], lora["fetch"], lora["attach"]) for lora in metrics["loras"]]
    assert events == [("main", 1.0, "download", "attached"), ("extra", 0.5, "download", "attached")]
    assert set(metrics["stage_seconds"]) == {"loras", "encode", "denoise", "safety", "save"}
    assert metrics["predict_time"] > 0
    assert not LIBRARY_NOISE.search(body["logs"]), LIBRARY_NOISE.search(body["logs"])  # peft's notice above all

    again = succeeded(server.predict(**inputs, replicate_weights=main, extra_lora=extra))["metrics"]
    assert [(lora["fetch"], lora["attach"]) for lora in again["loras"]] == [("cache", "rescaled")] * 2


# -- several requests: coglet frees a slot a moment after it answers, and one prediction runs on the GPU at a time


def outcome(response) -> str:
    """ "succeeded"/"failed"/"canceled" for an answered prediction, else the HTTP status ("409", "422")."""
    return response.json()["status"] if response.status_code == 200 else str(response.status_code)


def test_a_client_sending_each_request_once_it_has_the_answer_never_gets_409(server):
    """coglet 0.23.1 answers a prediction before its slot is free again; with one slot the next request got
    `409 At capacity` about once in ten tries. Successes, failed predictions and 422s, back to back."""
    mask = "data:image/png;base64," + base64.b64encode(_png_bytes()).decode()
    kinds = [{}, {"num_outputs": 5}, {"mask": mask}]  # succeeds, 422, fails
    with httpx2.Client(timeout=300) as client:
        outcomes = [
            outcome(
                client.post(
                    f"{server.url}/predictions",
                    json={"input": {"prompt": "x", "num_inference_steps": 1, "megapixels": "0.25", **kinds[i % 3]}},
                )
            )
            for i in range(30)
        ]
    assert outcomes == ["succeeded", "422", "failed"] * 10


def test_integer_inputs_sent_as_whole_floats_run_as_integers(server):
    body = succeeded(
        server.predict(
            prompt="x",
            num_outputs=2.0,
            num_inference_steps=1.0,
            seed=1e3,
            output_quality=80.0,
            aspect_ratio="custom",
            width=256.0,
            height=272.0,
        )
    )
    assert [decode(item).size for item in body["output"]] == [(256, 272)] * 2
    assert (body["metrics"]["seed"], body["metrics"]["steps"]) == (1000, 1)


def test_concurrent_requests_queue_for_the_gpu_and_give_what_each_gives_alone(server, two_loras):
    """Two requests at once: both succeed, one waits for the other (its `queue` stage), and each request's
    images are those it gives alone: LoRAs are swapped under the GPU lock, never under a running request."""
    # The first long enough that the second, even sent again after a 409, is admitted while it runs.
    with_lora = dict(prompt="x", num_inference_steps=24, megapixels="0.25", seed=11, output_format="png")
    with_lora.update(replicate_weights=two_loras[0], lora_scale=0.7)
    plain = dict(prompt="y", num_inference_steps=12, megapixels="0.25", seed=12, output_format="png")
    with ThreadPoolExecutor(2) as pool:
        answers = pool.map(lambda inputs: server.predict_when_admitted(**inputs), (with_lora, plain))
        together = [succeeded(response) for response in answers]
    assert sum("queue" in body["metrics"]["stage_seconds"] for body in together) == 1
    alone = [succeeded(server.predict(**inputs)) for inputs in (with_lora, plain)]
    assert [output_digests(body) for body in together] == [output_digests(body) for body in alone]


def test_a_queued_and_a_running_prediction_can_be_cancelled(server):
    """The running one stops at its next denoising step and the queued one never starts; both are answered
    `canceled`, and the server is READY and predicts as before."""
    with Webhooks() as hooks:
        long = dict(prompt="x", num_inference_steps=50, num_outputs=4, megapixels="0.25")  # 200 steps: seconds
        assert server.begin("running", hooks, **long).status_code == 202
        hooks.wait("running", lambda body: "step 2/50" in (body.get("logs") or ""))
        assert server.begin("queued", hooks, prompt="y", num_inference_steps=1, megapixels="0.25").status_code == 202
        hooks.wait("queued", lambda body: body.get("status") == "processing")  # in the worker: preparing or waiting
        assert server.cancel("queued").status_code == 200
        queued = hooks.wait("queued", lambda body: body.get("status") in ("succeeded", "failed", "canceled"))
        asked = time.monotonic()
        assert server.cancel("running").status_code == 200
        running = hooks.wait("running", lambda body: body.get("status") in ("succeeded", "failed", "canceled"))
        latency = time.monotonic() - asked
    assert (queued["status"], running["status"]) == ("canceled", "canceled")
    assert " step " not in queued["logs"]
    assert "out-3.webp" not in running["logs"] and "Saving outputs" not in running["logs"]
    assert server.health()["status"] == "READY"
    after = succeeded(server.predict(prompt="x", num_inference_steps=1, megapixels="0.25"))["metrics"]
    waited = after["stage_seconds"].get("queue", 0)  # for the cancelled one's GPU thread to stop
    print(f"\ncancel answered in {latency:.2f} s; the next prediction waited {waited:.2f} s for the GPU")
