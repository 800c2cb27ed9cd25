"""script/bench keeps working: the LoRA benchmark at tiny size (timings are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from testkit.cog_server import REPO_ROOT


def test_lora_bench_runs_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, REPO_ROOT / "script/bench.py", "lora", "--tiny", "--repeats", "1", "--json", out],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    timings = json.loads(out.read_text())["median_seconds"]
    assert len(timings) == 5 and all(seconds > 0 for seconds in timings.values())
    assert "re-scale an attached LoRA" in result.stdout


def test_generation_bench_runs_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, REPO_ROOT / "script/bench.py", "generation", "--tiny", "--repeats", "1", "--json", out],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    setups = {(row["setup"], row["model"], row["outputs"]) for row in report["rows"]}
    assert {("baseline diffusers", "dev", 4), ("ours bf16", "schnell", 1), ("ours go_fast", "dev", 1)} <= setups
    assert report["go_fast"].startswith("n/a: fp8 needs a CUDA GPU")  # CPU: the fallback is reported, not hidden
    assert all(row["seconds_per_step"] > 0 for row in report["rows"] if "note" not in row)
