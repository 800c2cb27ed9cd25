"""script/predict: a `cog predict` stand-in, in-process and against a running Cog server: inputs (-i, --json @file,
@-), output names (-o as cog names them), one `error:` line for every mistake a user can fix, streamed logs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from testkit.cog_server import REPO_ROOT, free_port
from testkit.lora_sites import tiny_lora_bytes, tiny_lora_shapes


def run(args: list[str], cwd, env, wrapper: bool = False, stdin: str | None = None) -> subprocess.CompletedProcess:
    command = (
        [str(REPO_ROOT / "script" / "predict")] if wrapper else [sys.executable, REPO_ROOT / "script/cog_predict.py"]
    )
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, input=stdin)


def assert_one_error_line(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert result.stderr.count("error: ") == 1 and "Traceback" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def server(tiny_server):
    return tiny_server


def test_the_quick_start_from_any_folder_with_nothing_configured(tmp_path, tmp_path_factory, tiny_env):
    """The README's quick start as a newcomer runs it, from some other folder: the tiny stand-ins and the LoRA
    cache live in the repo, only the outputs land in the current folder, and nothing is left in TMPDIR."""
    temp = tmp_path_factory.mktemp("predict-tmpdir")  # its outputs folder, removed when the process exits
    env = {k: v for k, v in tiny_env.items() if k not in ("WEIGHTS_DIR", "LORA_CACHE_DIR", "HF_TOKEN")}
    inputs = {"prompt": "a photo of TOK", "num_outputs": 2, "megapixels": "0.25", "num_inference_steps": 1}
    inputs.update(output_format="png", seed=3)
    args = [arg for name, value in inputs.items() for arg in ("-i", f"{name}={value}")]
    result = run(args, tmp_path, {**env, "TMPDIR": str(temp)}, wrapper=True)
    assert result.returncode == 0, result.stderr
    assert f"tiny random stand-ins in {REPO_ROOT / '.tiny-weights'}" in result.stderr
    assert "Using seed: 3" in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.0.png", "output.1.png"]
    assert Image.open(tmp_path / "output.0.png").size == (512, 512)
    assert list(temp.iterdir()) == []


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
        # After setup, in the predictor: a LoraError (UserInputError: the trained-predictor test, and the server's)
        (["-i", "prompt=x", "-i", "replicate_weights=/etc/lora.safetensors"], "Local LoRA paths"),
        (["--json", '{"prompt": "x"'], "--json: not valid JSON"),
        (["-i", "prompt=x", "-o", "no/such/folder/out.png"], "cannot write outputs to no/such/folder"),
    ],
)
def test_bad_inputs_exit_1_with_the_reason_and_no_traceback(tmp_path, tiny_env, args, message):
    assert_one_error_line(run(args, tmp_path, tiny_env), message)


def test_missing_weights_are_one_error_line(tmp_path, tiny_env):
    env = {**tiny_env, "WEIGHTS_DIR": str(tmp_path / "none")}
    assert_one_error_line(run(["-i", "prompt=x"], tmp_path, env), "HF_HUB_OFFLINE is set, so FLUX.1-dev cannot")


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


def test_against_a_running_server_with_logs_streamed(server, tmp_path, tiny_env):
    Image.new("RGB", (64, 64), (0, 0, 0)).save(tmp_path / "in.png")
    inputs = ["-i", "prompt=x", "-i", "image=@in.png", "-i", "num_inference_steps=4", "-i", "seed=9"]
    ok = run(["--url", server.url, *inputs, "-i", "output_format=jpg", "-i", "prompt_strength=0.5"], tmp_path, tiny_env)
    assert ok.returncode == 0, ok.stderr
    assert Image.open(tmp_path / "output.0.jpg").size == (64, 64)
    assert ok.stdout == "Written output to: output.0.jpg\n", "stdout lists the files; the logs go to stderr"
    assert "Using seed: 9" in ok.stderr and "out-0.jpg step 2/2" in ok.stderr, "the server's logs, as they grew"


def test_json_from_stdin_or_a_file_and_outputs_named_as_cog_names_them(server, tmp_path, tiny_env):
    inputs = {"prompt": "x", "num_inference_steps": 1, "megapixels": "0.25", "num_outputs": 2}
    stdin = run(["--url", server.url, "--json", "@-", "-o", "out.png"], tmp_path, tiny_env, stdin=json.dumps(inputs))
    assert stdin.returncode == 0, stdin.stderr
    (tmp_path / "in.json").write_text(json.dumps({**inputs, "num_outputs": 1}))
    (tmp_path / "folder").mkdir()
    from_file = run(["--url", server.url, "--json", "@in.json", "-o", "folder"], tmp_path, tiny_env)
    assert from_file.returncode == 0, from_file.stderr
    named = run(["--url", server.url, "--json", "@in.json", "-o", "named"], tmp_path, tiny_env)
    assert named.returncode == 0, named.stderr
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and p.name != "in.json")
    assert files == ["folder/output.0.webp", "named.0.webp", "out.0.png", "out.1.png"]
    assert Image.open(tmp_path / "out.0.png").format == "WEBP", "cog keeps the name given, whatever the format"
    assert "out.0.png holds webp data" in stdin.stderr


def test_server_side_mistakes_are_one_error_line(server, tmp_path, tiny_env):
    Image.new("RGB", (64, 64), (0, 0, 0)).save(tmp_path / "in.png")
    cases = [
        (["-i", "prompt=x", "-i", "num_outputs=9"], "num_outputs: 9 is greater than the maximum of 4"),
        (["-i", "prompt=x", "-i", "mask=@in.png"], "prediction failed: mask was given without image"),
        (["-i", "prompt=x", "-i", "replicate_weights=not a lora"], "Cannot use 'not a lora' as a LoRA"),
    ]
    for args, message in cases:
        assert_one_error_line(run(["--url", server.url, *args], tmp_path, tiny_env), message)


def test_no_server_at_the_url_is_one_error_line(tmp_path, tiny_env):
    url = f"http://127.0.0.1:{free_port()}"
    assert_one_error_line(run(["--url", url, "-i", "prompt=x"], tmp_path, tiny_env), f"no Cog server answers at {url}")
