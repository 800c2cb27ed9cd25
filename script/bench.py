"""Benchmarks that belong outside the test suite (tests assert behaviour, never timings).

    script/bench lora              attach / re-scale / swap LoRAs vs a cold load (CPU is fine)
    script/bench lora --tiny       the same on the tiny test model, in seconds (CI keeps it working)
    script/bench generation        per image / per step: diffusers vs ours bf16 vs go_fast (a GPU; runs
                                   script/gpu_check.py's phases); --tiny runs them on CPU (a minute or two)

`lora` builds a FLUX transformer with the real block count (19 double + 38 single blocks, so the same
~500 LoRA-carrying layers as FLUX.1) at a reduced width (768 instead of 3072; ~0.74 B parameters in
bf16), attaches rank-16 LoRAs in the ai-toolkit format Replicate's trainer writes, and times what a
prediction pays for its LoRAs in each situation, through the server's own code (LoraFetcher +
AdapterManager): a cold load (downloaded over loopback HTTP, validated, cached, attached), a LoRA in the
disk cache but not attached, a re-scale of an attached LoRA, and swaps. Medians of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from bench_common import RANK, static_server, timed, write_lora  # noqa: E402
from diffusers import FluxPipeline, FluxTransformer2DModel  # noqa: E402

from generation.logs import configure_logging  # noqa: E402
from generation.pipelines import FluxModels  # noqa: E402
from lora_loader import LoraFetcher  # noqa: E402
from lora_loader.adapters import AdapterManager, LoraSpec  # noqa: E402
from serverconfig import ServerConfig  # noqa: E402
from testkit.tiny_weights import write_tiny_weights  # noqa: E402
from weights.layout import FLUX_DEV, FLUX_SCHNELL  # noqa: E402

# Real FLUX.1 block counts; the width is what makes the full model 12 B parameters, not the layer count.
BENCH_TRANSFORMER = dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=6)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="script/bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    lora = commands.add_parser("lora", help="LoRA attach / swap / re-scale timings")
    lora.add_argument("--tiny", action="store_true", help="use the tiny test transformer (seconds, for CI)")
    lora.add_argument("--repeats", type=int, default=5)
    lora.add_argument("--json", type=Path, help="also write the results here")
    generation = commands.add_parser("generation", help="seconds per image/step: diffusers vs bf16 vs go_fast")
    generation.add_argument("--tiny", action="store_true", help="tiny test models on CPU (gpu-check --dry)")
    generation.add_argument("--repeats", type=int, default=3)
    generation.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    configure_logging(logging.WARNING)  # library progress bars off; the table is the output
    if args.command == "generation":
        from bench_generation import bench_generation, print_report

        results = bench_generation(args.tiny, args.repeats)
        print_report(results)
    else:
        results = bench_lora(args.tiny, args.repeats)
        print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def bench_lora(tiny: bool, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="flux-bench-") as tmp:
        root = Path(tmp)
        models, description = build_models(root, tiny)
        transformer = models.transformer("dev")
        files = {name: write_lora(root / f"{name}.safetensors", transformer, seed) for seed, name in enumerate("AB")}
        lora = f"rank {RANK}, {lora_layers(transformer)} layers, {files['A'].stat().st_size / 1e6:.1f} MB"
        with static_server(root) as base_url:
            timings = time_operations(models, root, base_url, repeats)
    return {
        "model": description,
        "lora": lora,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "median_seconds": timings,
    }


def build_models(root: Path, tiny: bool) -> tuple[FluxModels, str]:
    write_tiny_weights(root / "weights")
    dtype = torch.float32 if tiny else torch.bfloat16
    models = FluxModels.load(
        root / "weights" / FLUX_DEV.name, root / "weights" / FLUX_SCHNELL.name, torch.device("cpu"), dtype
    )
    if tiny:
        return models, "tiny test transformer (fp32)"
    dev = models.pipeline("dev", "txt2img")
    big = FluxTransformer2DModel(
        in_channels=64,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
        **BENCH_TRANSFORMER,
    ).to(dtype)
    schnell = models.pipeline("schnell", "txt2img")
    models = FluxModels(FluxPipeline(**{**dev.components, "transformer": big}), schnell, torch.device("cpu"))
    params = sum(p.numel() for p in big.parameters()) / 1e9
    return models, f"FLUX block layout (19+38 blocks), width 768, {params:.2f} B params, bf16"


def lora_layers(transformer: torch.nn.Module) -> int:
    return sum(
        1 for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear) and "transformer_blocks." in n
    )


class Session:
    """A fresh fetcher and adapter manager over one cache folder: what a server process holds."""

    def __init__(self, models: FluxModels, cache_dir: Path, base_url: str):
        self.fetcher = LoraFetcher(ServerConfig(lora_cache_dir=cache_dir, allow_private_urls=True))
        self.manager = AdapterManager(models)
        self.base_url = base_url

    def apply(self, main: str | None, extra: str | None = None, main_scale=1.0, extra_scale=1.0) -> None:
        """What a prediction does for its LoRAs: fetch (cache hit or download), then attach / re-scale."""
        self.manager.apply("dev", self._spec(main, main_scale), self._spec(extra, extra_scale))

    def _spec(self, name: str | None, scale: float) -> LoraSpec | None:
        if name is None:
            return None
        lora = self.fetcher.fetch(f"{self.base_url}/{name}.safetensors")
        return LoraSpec(key=lora.key, path=lora.path, scale=scale, source=lora.source)


def time_operations(models: FluxModels, root: Path, base_url: str, repeats: int) -> dict:
    samples: dict[str, list[float]] = {name: [] for name in OPERATIONS}
    for run in range(repeats):
        cold = Session(models, root / f"cache-{run}", base_url)  # an empty cache each run
        samples["cold"].append(timed(lambda s=cold: s.apply("A")))
        cold.apply(None)
        samples["cached"].append(timed(lambda s=cold: s.apply("A")))
        samples["rescale"].append(timed(lambda s=cold: s.apply("A", main_scale=0.6)))
        cold.apply("A", "B")
        samples["slots"].append(timed(lambda s=cold: s.apply("B", "A", 0.5, 0.8)))
        cold.apply("A")
        samples["swap"].append(timed(lambda s=cold: s.apply("B")))
        cold.apply(None)
    return {OPERATIONS[name]: statistics.median(values) for name, values in samples.items()}


OPERATIONS = {
    "cold": "cold load (download + validate + cache + attach)",
    "cached": "attach a LoRA from the disk cache",
    "swap": "swap A -> B, both in the disk cache",
    "rescale": "re-scale an attached LoRA",
    "slots": "A+B -> B+A (slots swapped, new scales)",
}


def print_table(results: dict) -> None:
    print(f"model:  {results['model']}\nLoRA:   {results['lora']}")
    print(f"device: {results['device']}, {results['threads']} threads, median of {results['repeats']} runs\n")
    for name, seconds in results["median_seconds"].items():
        print(f"  {name:<52} {seconds * 1000:9.1f} ms")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
