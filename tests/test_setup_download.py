"""setup() on an empty WEIGHTS_DIR downloads the base weights from a (fake) Hugging Face Hub, then serves."""

from __future__ import annotations

import pytest

from testkit.cog_server import CogServer
from testkit.fakes.hf_hub import FakeHub
from weights.layout import ALL_FOLDERS, FLUX_DEV

TOKEN = "hf_test_token_for_the_fake_hub"


@pytest.fixture
def hub(tiny_weights):
    with FakeHub() as hub:
        hub.tokens = {TOKEN}
        for folder in ALL_FOLDERS:
            files = {
                str(p.relative_to(tiny_weights / folder.name)): p.read_bytes()
                for p in (tiny_weights / folder.name).rglob("*")
                if p.is_file()
            }
            if folder is FLUX_DEV:
                files["flux1-dev.safetensors"] = b"\0" * 4096  # the 23 GB single-file checkpoint: never fetched
            hub.add_repo(folder.repo_id, files, gated=folder.gated)
        yield hub


def _env(tiny_env, hub, weights_dir, token):
    env = {k: v for k, v in tiny_env.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(WEIGHTS_DIR=str(weights_dir), HF_ENDPOINT=hub.endpoint)
    if token:
        env["HF_TOKEN"] = token
    return env


def test_setup_downloads_what_the_pipelines_load_then_serves(tiny_env, hub, tmp_path):
    weights_dir = tmp_path / "empty-weights"
    server = CogServer(_env(tiny_env, hub, weights_dir, TOKEN), log_path=tmp_path / "server.log").start()
    try:
        setup_logs = server.health()["setup"]["logs"]
        body = server.predict(prompt="x", num_inference_steps=1, megapixels="0.25").json()
    finally:
        server.stop()
    assert body["status"] == "succeeded", body
    assert "flux1-dev.safetensors" not in hub.requested(FLUX_DEV.repo_id)
    assert {f.name for f in weights_dir.iterdir() if not f.name.startswith(".")} == {f.name for f in ALL_FOLDERS}
    assert "Downloading" in setup_logs or "download" in setup_logs.lower()
    assert TOKEN not in setup_logs and TOKEN not in (tmp_path / "server.log").read_text()


def test_gated_flux_without_a_token_fails_setup_with_what_to_do(tiny_env, hub, tmp_path):
    server = CogServer(_env(tiny_env, hub, tmp_path / "w", None), log_path=tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="setup failed") as error:
        server.start()
    server.stop()
    assert "HF_TOKEN" in str(error.value) and "accept the licence" in str(error.value)
    assert not (tmp_path / "w" / FLUX_DEV.name).exists(), "nothing half-done may count as present"
