"""script/predict: a `cog predict` stand-in, in-process and against a running Cog server."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from testkit.cog_server import REPO_ROOT, CogServer
from testkit.lora_sites import tiny_lora_bytes, tiny_lora_shapes


def run(args: list[str], cwd, env, wrapper: bool = False) -> subprocess.CompletedProcess:
    command = (
        [str(REPO_ROOT / "script" / "predict")] if wrapper else [sys.executable, REPO_ROOT / "script/cog_predict.py"]
    )
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_quick_start_command_writes_outputs_to_the_current_folder(tmp_path, tiny_env):
    result = run(
        [
            "-i",
            "prompt=a photo of TOK",
            "-i",
            "num_outputs=2",
            "-i",
            "megapixels=0.25",
            "-i",
            "num_inference_steps=2",
            "-i",
            "output_format=png",
            "-i",
            "seed=3",
        ],
        tmp_path,
        tiny_env,
        wrapper=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Using seed: 3" in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.0.png", "output.1.png"]
    assert Image.open(tmp_path / "output.0.png").size == (512, 512)


def test_with_nothing_configured_it_uses_the_repos_folders_from_any_folder(tmp_path, tiny_env):
    """The quick start as a newcomer runs it, from some other folder: the tiny stand-ins and the LoRA cache
    live in the repo, and only the outputs land in the current folder."""
    env = {k: v for k, v in tiny_env.items() if k not in ("WEIGHTS_DIR", "LORA_CACHE_DIR", "HF_TOKEN")}
    result = run(["-i", "prompt=x", "-i", "num_inference_steps=1", "-i", "megapixels=0.25"], tmp_path, env, True)
    assert result.returncode == 0, result.stderr
    assert f"tiny random stand-ins in {REPO_ROOT / '.tiny-weights'}" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["output.0.webp"]


def test_file_inputs_with_at(tmp_path, tiny_env):
    Image.new("RGB", (300, 200), (10, 200, 30)).save(tmp_path / "in.png")
    result = run(
        ["-i", "prompt=x", "-i", "image=@in.png", "-i", "num_inference_steps=2", "-o", "edited"], tmp_path, tiny_env
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "edited.0.webp").size == (304, 208)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-i", "prompt=x", "-i", "width=9999"], "width: 9999 is greater than the maximum of 1440"),
        (["-i", "prompt=x", "-i", "aspect_ratio=7:3"], "aspect_ratio: '7:3' is not one of"),
        (["-i", "prompt=x", "-i", "num_outputs=two"], "num_outputs='two' is not a valid integer"),
        (["-i", "prompt=x", "-i", "colour=red"], "unknown input 'colour'"),
        (["-i", "num_outputs=1"], "'prompt' is a required property"),
        (["-i", "prompt=x", "-i", "image=@missing.png"], "no such file"),
        (
            ["-i", "prompt=x", "-i", "aspect_ratio=custom", "-i", "width=512", "-i", "num_inference_steps=1"],
            "height is not set",
        ),
    ],
)
def test_bad_inputs_exit_1_with_the_reason_and_no_traceback(tmp_path, tiny_env, args, message):
    result = run(args, tmp_path, tiny_env)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_trained_predictor_target_has_no_replicate_weights_and_needs_its_lora(tmp_path, tiny_env, tiny_weights):
    target = ["--target", "predict.py:TrainedPredictor"]
    inputs = ["-i", "prompt=x", "-i", "num_inference_steps=1", "-i", "megapixels=0.25"]
    result = run([*target, "-i", "prompt=x", "-i", "replicate_weights=a/b"], tmp_path, tiny_env)
    assert result.returncode == 1 and "unknown input 'replicate_weights'" in result.stderr

    result = run([*target, *inputs], tmp_path, tiny_env)
    assert result.returncode == 1 and "set COG_WEIGHTS" in result.stderr, "never the base model in silence"
    assert "Traceback" not in result.stderr

    lora = tmp_path / "loras" / "trained.safetensors"
    lora.parent.mkdir()
    lora.write_bytes(tiny_lora_bytes(tiny_lora_shapes(tiny_weights), "ai_toolkit", tmp_path / "build", seed=5))
    env = {**tiny_env, "COG_WEIGHTS": str(lora), "LORA_LOCAL_DIRS": str(lora.parent)}
    result = run([*target, *inputs, "-o", "trained"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert "Preloading the LoRA given at setup" in result.stdout + result.stderr


def test_against_a_running_server(tmp_path, tiny_env):
    server = CogServer(tiny_env, log_path=tmp_path / "server.log").start()
    try:
        Image.new("RGB", (64, 64), (0, 0, 0)).save(tmp_path / "in.png")
        ok = run(
            [
                "--url",
                server.url,
                "-i",
                "prompt=x",
                "-i",
                "image=@in.png",
                "-i",
                "num_inference_steps=2",
                "-i",
                "output_format=jpg",
            ],
            tmp_path,
            tiny_env,
        )
        bad = run(["--url", server.url, "-i", "prompt=x", "-i", "num_outputs=9"], tmp_path, tiny_env)
        failed = run(["--url", server.url, "-i", "prompt=x", "-i", "mask=@in.png"], tmp_path, tiny_env)
    finally:
        server.stop()
    assert ok.returncode == 0, ok.stderr
    assert Image.open(tmp_path / "output.0.jpg").size == (64, 64)
    assert bad.returncode == 1 and "num_outputs: 9 is greater than the maximum of 4" in bad.stderr
    assert failed.returncode == 1 and "mask was given without image" in failed.stderr
