"""A sweep of bad requests through the real Cog HTTP server: each gets one clear answer, and the server is fine after.

Every case is a request a user can really send: a wrong type, range or enum (HTTP 422 naming the field), or
something the schema cannot see (an unreadable image, a mask of another shape, a LoRA string that names
nothing, a host that does not resolve, a repo that needs a token, a file that is not a LoRA, a damaged or
hostile safetensors header), which fails the prediction (HTTP 200, status "failed") with a message holding a
fragment that tells the user what to change, with no traceback and no token in it. After each case the
server must answer READY and run a good prediction that gives the same image, bit for bit, as before any
bad request: a failure leaves no half-attached LoRA or other state behind, and no temp file, lock file or work
folder (in the server's TMPDIR and its LoRA cache). The server runs with a short download window
(DOWNLOAD_RATE_WINDOW_SECONDS=1) so that senders which drip fail in a second; a cancelled prediction whose
image URL drips (above that rate, so only the cancel stops it) frees the server within a couple of seconds.

One server (setup is ~5 s) and one set of fake LoRA sites serve the whole module.
"""

from __future__ import annotations

import base64
import io
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import torch
from PIL import Image
from safetensors.torch import save

from testkit import lora_fixtures
from testkit.cog_server import CogServer
from testkit.fakes.lora_servers import FakeVersion, make_tar, trainer_tar
from testkit.lora_sites import LoraSites, tiny_lora_bytes, tiny_lora_shapes

# Tokens the server holds: none may ever show up in an answer. The Replicate one is wrong for the gated model.
REPLICATE_TOKEN = "r8_wrong_token_d0n7_l34k_m3"
URL_SECRET = "sig-s3cr3t-v4lue"
URL_PASSWORD = "pa55-in-the-url"
SECRETS = (REPLICATE_TOKEN, URL_SECRET, URL_PASSWORD, "civitai-demands-this", "r8_right_token")
# Downloads slower than 1 kB/s over a second fail: a drip is over in a second, a healthy loopback is never slow.
PACE = {"DOWNLOAD_MIN_BYTES_PER_SECOND": "1kB", "DOWNLOAD_RATE_WINDOW_SECONDS": "1"}

GOOD_LORA = "huggingface.co/bob/style"
GOOD = {
    "prompt": "a photo of TOK",
    "num_inference_steps": 1,
    "megapixels": "0.25",
    "seed": 7,
    "output_format": "png",
    "replicate_weights": GOOD_LORA,
    "lora_scale": 0.8,
}


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png(size: tuple[int, int], mode: str = "RGB", color=255) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


SQUARE = data_uri(png((64, 64)))


def bomb() -> str:
    """240 MP of one color: 29 kB of PNG (so it is built only when its case runs)."""
    return data_uri(png((20_000, 12_000), mode="1", color=0))


@dataclass(frozen=True)
class Bad:
    """One bad request: `inputs` on top of a valid prompt (`{files}` in a value is the fake file host's URL; a
    callable value is called when the case runs).

    Exactly one of `field` (HTTP 422 whose only error names that input) or `error` (a failed prediction whose
    message contains that fragment)."""

    id: str
    inputs: dict
    field: str | None = None
    error: str | None = None
    drop: tuple[str, ...] = ()  # inputs left out of the request


CASES = [
    # -- the schema: types, ranges, enums (HTTP 422 naming the field) ---------------------------------------
    Bad("prompt missing", {}, field="prompt", drop=("prompt",)),
    Bad("prompt not a string", {"prompt": 5}, field="prompt"),
    Bad("num_outputs above 4", {"num_outputs": 5}, field="num_outputs"),
    Bad("num_outputs 0", {"num_outputs": 0}, field="num_outputs"),
    Bad("steps 0", {"num_inference_steps": 0}, field="num_inference_steps"),
    Bad("steps above 50", {"num_inference_steps": 51}, field="num_inference_steps"),
    Bad("steps not a number", {"num_inference_steps": "many"}, field="num_inference_steps"),
    Bad("steps fractional", {"num_inference_steps": 1.5}, field="num_inference_steps"),
    Bad("guidance above 10", {"guidance_scale": 10.5}, field="guidance_scale"),
    Bad("guidance negative", {"guidance_scale": -0.1}, field="guidance_scale"),
    Bad("prompt_strength above 1", {"prompt_strength": 1.5}, field="prompt_strength"),
    Bad("output_quality above 100", {"output_quality": 101}, field="output_quality"),
    Bad("width above 1440", {"aspect_ratio": "custom", "width": 9999, "height": 512}, field="width"),
    Bad("height below 256", {"aspect_ratio": "custom", "width": 512, "height": 100}, field="height"),
    Bad("lora_scale above 3", {"lora_scale": 3.5}, field="lora_scale"),
    Bad("extra_lora_scale below -1", {"extra_lora_scale": -1.5}, field="extra_lora_scale"),
    Bad("aspect_ratio not in the list", {"aspect_ratio": "7:3"}, field="aspect_ratio"),
    Bad("model unknown", {"model": "pro"}, field="model"),
    Bad("output_format gif", {"output_format": "gif"}, field="output_format"),
    Bad("megapixels 2", {"megapixels": "2"}, field="megapixels"),
    Bad("go_fast not a boolean", {"go_fast": "yes"}, field="go_fast"),
    Bad("seed not a number", {"seed": "abc"}, field="seed"),
    Bad("seed null", {"seed": None}, field="seed"),
    Bad("num_outputs 2.5", {"num_outputs": 2.5}, field="num_outputs"),
    # a whole number sent as a float passes the schema (2.0 runs as 2); this one is beyond any seed
    Bad("seed 1e30", {"seed": 1e30}, error="seed must be at most 9223372036854775807"),
    Bad("image not a string", {"image": 123}, field="image"),
    # -- images and masks (failed predictions) --------------------------------------------------------------
    Bad("image not an image", {"image": data_uri(b"GIF89a? no, garbage")}, error="image could not be read"),
    Bad("image truncated PNG", {"image": data_uri(png((64, 64))[:60])}, error="image could not be read"),
    Bad("image URL serves HTML", {"image": "{files}/photo.png"}, error="image could not be read"),
    Bad("image URL 404", {"image": "{files}/missing.png"}, error="404"),
    Bad(
        "image URL 404, upper-case scheme",
        {"image": "HTTP://{host}/missing.png"},
        error="missing.png answered HTTP 404",
    ),
    Bad("image URL port not a number", {"image": "http://127.0.0.1:abc/photo.png"}, error="its port 'abc' is not a"),
    Bad("image URL drips", {"image": "{files}/drip.png"}, error="Could not download an input image: only"),
    Bad("image decompression bomb", {"image": bomb}, error="(240 MP); the limit is 200 MP"),
    Bad("mask without image", {"mask": SQUARE}, error="mask was given without image"),
    Bad("mask unreadable", {"image": SQUARE, "mask": data_uri(b"not a mask")}, error="mask could not be read"),
    Bad("mask of another aspect", {"image": SQUARE, "mask": data_uri(png((64, 32)))}, error="aspect ratios differ"),
    Bad("custom without width", {"aspect_ratio": "custom", "height": 512}, error="width is not set"),
    Bad("custom without height", {"aspect_ratio": "custom", "width": 512}, error="height is not set"),
    Bad("img2img strength 0", {"image": SQUARE, "prompt_strength": 0}, error="leaves no denoising step"),
    # -- LoRA strings ---------------------------------------------------------------------------------------
    Bad("LoRA not a source", {"replicate_weights": "not a lora"}, error="main LoRA: Cannot use 'not a lora'"),
    Bad("LoRA ftp URL", {"replicate_weights": "ftp://example.com/a.safetensors"}, error="Cannot use 'ftp://"),
    Bad("LoRA too many parts", {"replicate_weights": "a/b/c/d/e"}, error="Cannot use 'a/b/c/d/e'"),
    Bad("LoRA URL not .safetensors", {"replicate_weights": "{files}/model.ckpt"}, error="must end in .safetensors"),
    Bad("extra_lora not a source", {"extra_lora": "??"}, error="extra_lora: Cannot use '??'"),
    Bad("LoRA data: not base64", {"replicate_weights": "data:;base64,!!!"}, error="not valid base64"),
    Bad("LoRA local path", {"replicate_weights": "/nonexistent/x.safetensors"}, error="not allowed on this server"),
    Bad(
        "LoRA URL IPv6 bracket open",
        {"replicate_weights": "http://[::1/x.safetensors"},
        error="main LoRA: Cannot use 'http://[::1/x.safetensors' as a LoRA: its host is not a valid IPv6 address",
    ),
    Bad(
        "LoRA URL port not a number",
        {"replicate_weights": "http://host:abc/x"},
        error="main LoRA: Cannot use 'http://host:abc/x' as a LoRA: its port 'abc' is not a number from 1 to 65535",
    ),
    Bad("LoRA URL host xn--", {"replicate_weights": "http://xn--/x"}, error="main LoRA: Cannot use 'http://xn--/x'"),
    Bad(
        "LoRA URL octal address",
        {"replicate_weights": "http://0177.0.0.1/x.safetensors"},
        error="its host '0177.0.0.1' is not a valid IPv4 address",
    ),
    Bad("extra_lora URL address 256", {"extra_lora": "http://256.0.0.1/x"}, error="extra_lora: Cannot use 'http://256"),
    Bad(
        "HF file with %2e%2e segments",
        {"replicate_weights": "huggingface.co/bob/trav/blob/main/%2e%2e/%2e%2e/x.safetensors"},
        error="main LoRA: Cannot use 'https://huggingface.co/bob/trav/blob/main/%2e%2e/%2e%2e/x.safetensors' as a",
    ),
    # -- LoRA sources that cannot be had ----------------------------------------------------------------------
    # "no such host" at once where DNS answers NXDOMAIN, "5 attempts failed" where the resolver cannot answer at
    # all; each wording is pinned in test_url_safety
    Bad(
        "LoRA host does not resolve",
        {"replicate_weights": "https://loras.example.invalid/style.safetensors"},
        error="loras.example.invalid",
    ),
    Bad("LoRA URL 404, secret query", {"replicate_weights": "{files}/gone.safetensors?sig=" + URL_SECRET}, error="404"),
    Bad(
        "LoRA URL 404, password",
        {"replicate_weights": f"http://bob:{URL_PASSWORD}@{{host}}/gone.safetensors"},
        error="404",
    ),
    Bad(
        "LoRA URL drips",
        {"replicate_weights": "{files}/drip.safetensors"},
        error="main LoRA: Could not download LoRA http://127.0.0.1",
    ),
    Bad("HF gated, no HF_TOKEN", {"replicate_weights": "huggingface.co/bob/gated"}, error="set HF_TOKEN"),
    Bad("HF repo not found", {"replicate_weights": "huggingface.co/bob/nope"}, error="bob/nope was not found"),
    Bad("HF repo without LoRA", {"replicate_weights": "huggingface.co/bob/docs"}, error="holds no .safetensors"),
    Bad("HF repo ambiguous", {"replicate_weights": "huggingface.co/bob/many"}, error="none is clearly the LoRA"),
    Bad("CivitAI needs a token", {"replicate_weights": "civitai.com/models/4321"}, error="set CIVITAI_API_TOKEN"),
    Bad("CivitAI model not found", {"replicate_weights": "civitai.com/models/999"}, error="no model with id 999"),
    Bad("Replicate token refused", {"replicate_weights": "alice/private"}, error="refused REPLICATE_API_TOKEN"),
    Bad("Replicate model not found", {"replicate_weights": "alice/nope"}, error="has no trained weights"),
    # -- files that are not (valid) LoRAs ---------------------------------------------------------------------
    Bad("non-LoRA safetensors", {"replicate_weights": "{files}/classifier.safetensors"}, error="no LoRA tensors"),
    Bad("SDXL LoRA", {"replicate_weights": "{files}/sdxl.safetensors"}, error="SD 1.x/SDXL"),
    Bad("LoRA for a bigger model", {"replicate_weights": "{files}/wide.safetensors"}, error="another size"),
    Bad("header not JSON", {"replicate_weights": "{files}/bad-json.safetensors"}, error="header is not JSON"),
    Bad("huge header length", {"replicate_weights": "{files}/huge.safetensors"}, error="header length 1099511627776"),
    Bad("truncated safetensors", {"replicate_weights": "{files}/truncated.safetensors"}, error="truncated"),
    Bad("HTML sign-in page", {"replicate_weights": "{files}/signin.safetensors"}, error="got an HTML page"),
    Bad("pickle checkpoint", {"replicate_weights": "{files}/pickle.safetensors"}, error="pickle"),
    Bad("empty file", {"replicate_weights": "{files}/empty.safetensors"}, error="empty file (0 bytes)"),
    Bad("tar with two LoRAs", {"replicate_weights": "{files}/two.tar"}, error="must hold exactly one"),
    Bad("Replicate weights not a tar", {"replicate_weights": "alice/html"}, error="got an HTML page"),
    Bad(
        "good main, non-LoRA extra",
        {"replicate_weights": GOOD_LORA, "extra_lora": "{files}/classifier.safetensors"},
        error="classifier.safetensors: This file has no LoRA tensors",  # names the failing one of the two
    ),
]


@pytest.fixture(scope="module")
def sites(tiny_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-input-loras")
    shapes = tiny_lora_shapes(tiny_weights)
    good, other = tiny_lora_bytes(shapes, "diffusers", folder, 1), tiny_lora_bytes(shapes, "kohya", folder, 2)
    with LoraSites() as running:
        running.hub.add_repo("bob/style", {"lora.safetensors": good})
        running.hub.add_repo("bob/gated", {"lora.safetensors": good}, gated=True)
        running.hub.add_repo("bob/docs", {"README.md": b"# no weights here"})
        running.hub.add_repo("bob/many", {"a.safetensors": good, "b.safetensors": other})
        running.civitai.token = "civitai-demands-this"
        running.civitai.add_model(4321, [FakeVersion(id=8765, content=other)])
        running.replicate.token = "r8_right_token"
        running.replicate.add_model("alice", "private", trainer_tar(good))
        running.replicate.token = None
        running.replicate.add_model("alice", "html", b"<!DOCTYPE html><html>Sign in</html>")
        files = running.files
        files.add_page("/photo.png", b"<!DOCTYPE html><html>Your photo</html>")
        files.add_file(
            "/classifier.safetensors", save({"encoder.0.weight": torch.ones(8, 8), "head.bias": torch.ones(3)})
        )
        for name in ("sdxl_kohya", "wrong_width"):
            path, _ = lora_fixtures.write_unsupported(name, folder)
            files.add_file(
                {"sdxl_kohya": "/sdxl.safetensors", "wrong_width": "/wide.safetensors"}[name], path.read_bytes()
            )
        header = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'  # a closing brace short
        files.add_file("/bad-json.safetensors", struct.pack("<Q", len(header)) + header + bytes(8))
        files.add_file("/huge.safetensors", struct.pack("<Q", 2**40) + b'{"a": {}}' + bytes(64))
        files.add_file("/truncated.safetensors", good[: len(good) // 2])
        files.add_file("/signin.safetensors", b"<!DOCTYPE html><html><body>Sign in to download</body></html>")
        files.add_file("/pickle.safetensors", b"\x80\x02}q\x00(X\x05\x00\x00\x00state" + bytes(200))
        files.add_file("/empty.safetensors", b"")
        files.add_file("/two.tar", make_tar({"a.safetensors": good, "b.safetensors": other}))
        files.add_file("/photo-ok.png", png((48, 32)), content_type="image/png")
        for path in ("/drip.png", "/drip.safetensors"):  # 5 MB announced, 5 bytes a second
            files.add_file(path, bytes(5_000_000))
            files.drip(path, bytes_per_tick=1, interval=0.2, times=None)
        files.add_file("/slow.png", bytes(5_000_000), content_type="image/png")  # 10 kB/s: only a cancel ends it
        files.drip("/slow.png", bytes_per_tick=2000, interval=0.2, times=None)
        yield running


@pytest.fixture(scope="module")
def temp_dir(tmp_path_factory) -> Path:
    """The server's TMPDIR: its outputs folder and Cog's downloaded inputs, and nothing else, land here."""
    return tmp_path_factory.mktemp("bad-inputs-tmp")


@pytest.fixture(scope="module")
def lora_cache(tmp_path_factory) -> Path:
    """The server's LORA_CACHE_DIR: after every request it holds entries only (no lock file, no work folder)."""
    return tmp_path_factory.mktemp("bad-inputs-lora-cache")


@pytest.fixture(scope="module")
def server(tiny_env, sites, temp_dir, lora_cache, tmp_path_factory):
    env = {**tiny_env, **sites.env(), "REPLICATE_API_TOKEN": REPLICATE_TOKEN, "TMPDIR": str(temp_dir), **PACE}
    env["LORA_CACHE_DIR"] = str(lora_cache)
    for name in ("HF_TOKEN", "CIVITAI_API_TOKEN"):  # the "missing token" cases need them unset
        env.pop(name, None)
    running = CogServer(env, log_path=tmp_path_factory.mktemp("bad-inputs") / "server.log").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def good_image(server) -> bytes:
    """The good request's image before any bad request: every later run must reproduce it exactly."""
    return _run_good(server)


def predict(server, **inputs) -> httpx2.Response:
    """POST a prediction once: a client that waits for each answer is never refused with 409 (predict.py)."""
    return server.predict(**inputs)


def _run_good(server) -> bytes:
    response = predict(server, **GOOD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded", body
    header, _, payload = body["output"][0].partition(",")
    assert header == "data:image/png;base64"
    return base64.b64decode(payload)


def _settled_health(server, seconds: float = 5) -> str:
    """The health status once the last prediction's slot is free: coglet answers a prediction a moment before
    it marks itself idle, so a health check right after an answer can still say BUSY."""
    deadline = time.monotonic() + seconds
    status = server.health().get("status")
    while status == "BUSY" and time.monotonic() < deadline:
        time.sleep(0.02)
        status = server.health().get("status")
    return status


def _temp_files(folder: Path) -> set[str]:
    """What is in the server's temp folder besides its outputs folder (emptied by each prediction)."""
    return {p.name for p in folder.iterdir() if not p.name.startswith("flux-outputs-")}


def _cache_leftovers(cache: Path) -> list[str]:
    """Lock files and work folders in the LoRA cache: a fetch that ended, however it ended, leaves neither."""
    locks = [p.name for p in (cache / "locks").glob("*.lock") if p.name != "cache.lock"]
    return locks + [p.name for p in (cache / "tmp").iterdir()]


def _request(case: Bad, sites: LoraSites) -> dict:
    urls = {"files": sites.files.base_url, "host": sites.files.base_url.removeprefix("http://")}
    inputs = {"prompt": "a photo of TOK", "num_inference_steps": 1, "megapixels": "0.25"}
    for name, value in case.inputs.items():
        value = value() if callable(value) else value
        inputs[name] = value.format_map(urls) if isinstance(value, str) else value
    return {k: v for k, v in inputs.items() if k not in case.drop}


def test_the_sweep_has_at_least_30_distinct_bad_requests():
    assert len({case.id for case in CASES}) == len(CASES) >= 30
    assert all((case.field is None) != (case.error is None) for case in CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_a_bad_request_gets_one_clear_answer_and_the_server_stays_good(
    server, sites, temp_dir, lora_cache, good_image, case
):
    before = _temp_files(temp_dir)
    response = predict(server, **_request(case, sites))
    text = response.text
    if case.field is not None:
        assert response.status_code == 422, text
        assert [d["loc"] for d in response.json()["detail"]] == [["body", "input", case.field]], text
    else:
        assert response.status_code == 200, text
        body = response.json()
        assert body["status"] == "failed", body
        assert case.error in body["error"], body["error"]
        assert "Traceback" not in body["error"] and 'File "' not in body["error"], body["error"]
    assert not [secret for secret in SECRETS if secret in text], text
    assert _settled_health(server) == "READY"
    assert _temp_files(temp_dir) <= before, "the request left temp files"
    assert _cache_leftovers(lora_cache) == [], "the request left lock files or work folders in the LoRA cache"
    assert _run_good(server) == good_image, "a failed request changed what the next good request generates"


def test_a_malformed_body_gets_400_and_the_server_stays_ready(server):
    response = httpx2.post(
        f"{server.url}/predictions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 422), response.text
    assert _settled_health(server) == "READY"


def test_a_local_path_lora_does_not_echo_server_files(server, good_image):
    """A LoRA path is read on the server; an error about a file that is not a LoRA must not quote its bytes."""
    body = predict(server, **{**GOOD, "replicate_weights": "/etc/passwd"}).json()
    assert body["status"] == "failed"
    assert "root:" not in body["error"], body["error"]
    assert _run_good(server) == good_image


def test_a_mask_of_the_image_aspect_but_another_size_is_resized(server):
    image = data_uri(png((128, 64)))
    body = predict(server, prompt="x", image=image, mask=data_uri(png((32, 16))), num_inference_steps=1).json()
    assert body["status"] == "succeeded", body


def test_a_failed_image_download_leaves_no_temp_file(server, sites, temp_dir):
    """cog 0.23.1's URLPath.convert() creates its temp file before copying the download and leaves it behind
    when the copy fails; generation/input_urls downloads first."""
    before = _temp_files(temp_dir)
    body = predict(server, prompt="x", image=f"{sites.files.base_url}/also-missing.png", num_inference_steps=1).json()
    assert body["status"] == "failed"
    assert _temp_files(temp_dir) <= before


def test_an_image_url_with_an_upper_case_scheme_is_downloaded_like_any_other(server, sites, temp_dir) -> None:
    """URL schemes are case-insensitive; coglet's own test is not, so such URLs reach predict() as strings."""
    before = _temp_files(temp_dir)
    image = "HTTP://" + sites.files.url("/photo-ok.png").removeprefix("http://")
    body = predict(server, prompt="x", image=image, num_inference_steps=1, megapixels="0.25").json()
    assert body["status"] == "succeeded", body
    assert len(sites.files.gets("/photo-ok.png")) == 1
    assert _temp_files(temp_dir) <= before, "the downloaded input was left behind"


def test_cancelling_a_prediction_stops_its_image_download(server, sites, temp_dir, lora_cache, good_image) -> None:
    """The image drips above the minimum rate, so nothing but the cancel ends it. The download's temp file shows
    it running and its end: gone within a couple of seconds of the cancel, the server READY, and the next good
    prediction byte-identical."""
    before = _temp_files(temp_dir)
    prediction = uuid.uuid4().hex
    inputs = {"prompt": "x", "num_inference_steps": 1, "megapixels": "0.25", "image": sites.files.url("/slow.png")}
    started = httpx2.put(
        f"{server.url}/predictions/{prediction}",
        json={"input": inputs},
        headers={"Prefer": "respond-async"},
        timeout=10,
    )
    assert started.status_code in (200, 202), started.text
    assert _wait(lambda: _temp_files(temp_dir) - before, 30), "the image download never started"

    cancelled = time.monotonic()
    assert httpx2.post(f"{server.url}/predictions/{prediction}/cancel", timeout=10).status_code == 200
    assert _wait(lambda: _temp_files(temp_dir) <= before, 5), "the download went on after the cancel"
    assert _settled_health(server, seconds=5) == "READY"
    assert time.monotonic() - cancelled < 2.5, "the cancel did not stop the download promptly"

    assert _cache_leftovers(lora_cache) == []
    assert _run_good(server) == good_image


def _wait(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
