"""`script/bench generation`: seconds per image and per step, plain diffusers vs our predictor (bf16 and go_fast).

One implementation: this runs script/gpu_check.py's phases (full-size random-weight FLUX.1 dev + schnell built
on the GPU in bf16; diffusers' FluxPipeline with a rank-16 LoRA as the baseline; our compiled bf16 and fp8 paths
through GenerationService; LoRA swap; fp8-vs-bf16 error; TFLOP/s) and prints them as a table. `--tiny` runs
gpu_check's `--dry` (tiny models on CPU; tests/test_gpu_check.py runs that end to end). For the JSON with every
phase, the setup split, peak memory and the issue's targets, run script/gpu-check itself.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gpu_check

LABELS = {"baseline": "baseline diffusers", "bf16": "ours bf16", "fp8": "ours go_fast"}


def bench_generation(tiny: bool, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="flux-bench-") as tmp:
        out = Path(tmp) / "gpu-check.json"
        argv = ["--out", str(out), "--repeats", str(repeats), "--repeats-4", str(max(1, repeats - 1))]
        gpu_check.main(argv + (["--dry"] if tiny else []))
        return report_from_gpu_check(json.loads(out.read_text()))


def report_from_gpu_check(check: dict) -> dict:
    """The bench's table from a gpu-check JSON: one row per (setup, model, outputs); a phase that did not run
    gives rows with a note saying why."""
    phases = check["phases"]
    steps = check["meta"]["steps"]
    rows = []
    for key, phase in (("baseline", "baseline"), ("bf16", "bf16_timings"), ("fp8", "fp8_timings")):
        entry = phases.get(phase, {})
        measured = (entry.get("result") or {}).get("rows", [])
        for row in measured:
            if "seconds_per_image" not in row:
                rows.append(
                    {
                        "setup": LABELS[key],
                        "model": row["model"],
                        "outputs": row["outputs"],
                        "note": row.get("stopped", "not measured"),
                    }
                )
                continue
            per_step = row.get("denoise_seconds_per_step") or row["median_seconds"] / (
                row["outputs"] * steps[row["model"]]
            )
            rows.append(
                {
                    "setup": LABELS[key],
                    "model": row["model"],
                    "outputs": row["outputs"],
                    "seconds_per_image": row["seconds_per_image"],
                    "seconds_per_step": per_step,
                    "end_to_end_seconds": row["median_seconds"],
                    "path": row.get("path", "diffusers"),
                }
            )
        if not measured:
            why = entry.get("reason") or (entry.get("error") or "").strip().splitlines()[-1:] or ["not run"]
            rows.append({"setup": LABELS[key], "model": "-", "outputs": 0, "note": f"n/a: {''.join(why)}"})
    result = lambda name: phases.get(name, {}).get("result") or {}  # noqa: E731
    environment = result("environment")
    return {
        "models": result("build").get("what", "not built"),
        "device": environment.get("gpu") or environment.get("device", "?"),
        "size": check["meta"]["size"],
        "rows": rows,
        "lora_swap_seconds": {k: v["median_seconds"] for k, v in result("lora_swap").items() if isinstance(v, dict)},
        "fp8_relative_error": result("fp8_error").get("relative_error"),
        "tflop_per_step": result("tflops").get("tflop_per_step", {}),
        "targets": result("summary").get("targets", []),
    }


def print_report(results: dict) -> None:
    print(f"models: {results['models']}\ndevice: {results['device']}, {results['size']}\n")
    print(f"  {'setup':<20}{'model':<9}{'n':>2} {'s/image':>9} {'s/step':>9} {'TFLOP/s':>9}  path")
    for row in results["rows"]:
        if "note" in row:
            print(f"  {row['setup']:<20}{row['model']:<9}{row['outputs']:>2}  {row['note']}")
            continue
        flop = results["tflop_per_step"].get(row["model"])
        rate = f"{flop / row['seconds_per_step']:9.2f}" if flop else f"{'?':>9}"
        print(
            f"  {row['setup']:<20}{row['model']:<9}{row['outputs']:>2} {row['seconds_per_image']:9.3f}"
            f" {row['seconds_per_step']:9.4f} {rate}  {row['path']}"
        )
    print(f"\nLoRA swap (HotswapAdapterManager.apply, median): {results['lora_swap_seconds']}")
    print(f"fp8 vs bf16 relative error of one step: {results['fp8_relative_error']}")
    print("TFLOP per step: " + ", ".join(f"{m} {v:.2f}" for m, v in results["tflop_per_step"].items()))
    for target in results["targets"]:
        print(f"  {'PASS' if target['pass'] else 'FAIL'}  {target['target']}")
