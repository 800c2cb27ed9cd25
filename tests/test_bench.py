"""script/bench keeps working: the LoRA benchmark at tiny size (timings are printed, never asserted), and the
generation benchmark's table from a gpu-check report (the run itself is gpu-check's, tested end to end by
tests/test_gpu_check.py)."""

from __future__ import annotations

import json
import sys

from testkit.cog_server import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "script"))

import bench_generation  # noqa: E402


def test_lora_bench_runs_at_tiny_size(lora_bench_run):
    """`script/bench.py lora --tiny --repeats 1`, started with the session (conftest)."""
    result = lora_bench_run.wait(timeout=300)
    assert result.returncode == 0, result.stderr
    timings = json.loads((lora_bench_run.folder / "bench.json").read_text())["median_seconds"]
    assert len(timings) == 5 and all(seconds > 0 for seconds in timings.values())
    assert "re-scale an attached LoRA" in result.stdout


def _row(model, n, seconds, path=None):
    row = {"model": model, "outputs": n, "median_seconds": seconds * n, "seconds_per_image": seconds}
    return {**row, "path": path} if path else row


def test_generation_bench_table_from_a_gpu_check_report(capsys):
    check = {
        "meta": {"size": "1024x1024", "steps": {"dev": 28, "schnell": 4}},
        "phases": {
            "environment": {"status": "ok", "result": {"gpu": "NVIDIA H200", "device": "cuda"}},
            "build": {"status": "ok", "result": {"what": "FLUX.1 at real configs"}},
            "baseline": {"status": "ok", "result": {"rows": [_row("dev", 1, 5.6), _row("dev", 4, 5.2)]}},
            "bf16_timings": {
                "status": "ok",
                "result": {
                    "rows": [_row("dev", 1, 3.0, "compiled"), {"model": "dev", "outputs": 4, "stopped": "budget spent"}]
                },
            },
            "fp8_timings": {"status": "error", "error": "Traceback ...\nRuntimeError: the fp8 path cannot run here"},
            "lora_swap": {"status": "ok", "result": {"bf16_path": {"median_seconds": 0.2}, "fp8_path": "not built"}},
            "tflops": {"status": "ok", "result": {"tflop_per_step": {"dev": 74.4, "schnell": 69.5}}},
            "summary": {"status": "ok", "result": {"targets": [{"target": "dev bf16 <= 4.0 s/image", "pass": True}]}},
        },
    }
    report = bench_generation.report_from_gpu_check(check)
    rows = {(row["setup"], row["model"], row["outputs"]): row for row in report["rows"]}
    assert rows[("baseline diffusers", "dev", 4)]["seconds_per_image"] == 5.2
    assert rows[("ours bf16", "dev", 1)]["seconds_per_step"] == 3.0 / 28
    assert rows[("ours bf16", "dev", 4)]["note"] == "budget spent"
    assert rows[("ours go_fast", "-", 0)]["note"] == "n/a: RuntimeError: the fp8 path cannot run here"
    assert report["lora_swap_seconds"] == {"bf16_path": 0.2} and report["device"] == "NVIDIA H200"
    bench_generation.print_report(report)
    printed = capsys.readouterr().out
    assert "ours bf16" in printed and "PASS  dev bf16" in printed and "n/a: RuntimeError" in printed
