"""Soak test: hundreds of predictions over HTTP against the real Cog server, then what they left behind.

    script/soak                      300 predictions on the tiny weights (builds them in .tiny-weights/)
    script/soak -n 1000 --json soak.json
    script/soak -n 30                a quick look: every target but RSS growth (see below)
    script/soak --keep               keep the work folder (server log, cache, temp folder) for a look

It starts the real Cog server (`python -m cog.server.http`, as testkit/cog_server.py does) on the tiny random weights,
with fake Replicate, CivitAI, Hugging Face and plain-URL LoRA sites on 127.0.0.1 (testkit/lora_sites.py: nothing
leaves the machine), a LoRA cache capped small enough that it must evict, and its own temp folder. Then it
sends N predictions one after another, cycling deterministically through dev/schnell, txt2img/img2img/inpaint,
aspect ratios, megapixels, custom sizes, output formats, num_outputs, go_fast, and LoRAs: none, one or two, from
every source (Replicate tar, Hugging Face, CivitAI page and download link, plain URLs, data: URIs) at scales
from -0.5 to 1.5, with a rotating set of URL LoRAs so entries are evicted and fetched again.

At the end it reports, against the targets:
- server RSS (the server and its worker, summed) at the start, after the warm-up and at the end, each a
  median over 20 predictions (one sample swings by a few percent): growth after the warm-up must stay under
  5%; the slope after the warm-up (MB per 100 predictions) is printed too. The warm-up (60 predictions) runs
  every request shape, including all six 1 MP sizes (one prediction in ten): each new large size raises the
  allocator's high-water mark once, by 50-200 MB, and the plateau comes after the last of them. So growth is
  judged only after a warm-up of at least 60 and with 40 predictions after it; a shorter run prints it, marked
  "not judged", and its warm-up defaults to half the run;
- the most LoRA adapters any prediction left resident (its `lora_adapters_resident` metric): never more than 2;
- temp files left once the server has stopped: nothing new in its temp folder (each prediction's outputs
  folder is removed a few seconds after Cog sent its files, the process's outputs folder when it exits) and
  nothing in the cache's tmp/;
- the cache's size against LORA_CACHE_MAX_BYTES, how many LoRAs were downloaded (the predictions' `loras` metrics)
  and how many entries were evicted (entries gone from the cache folder after a prediction);
- failed predictions: none, a `409 At capacity` included: it sends each request once it has the previous
  answer, as a polite client does, and such a client must never be refused (generation/gpu_queue.py).
Exit status 1 when a target is missed.

The cache counts an entry used in the last 60 s as in use and never evicts it (another process may be loading
it). Predictions here take a fraction of a second, so in a few minutes' run nearly everything would count as in
use and the cache would (by design, with a warning) stay over its cap. So, unless --real-clock, the soak runs the
server with LORA_CACHE_IN_USE_SECONDS=0, as if predictions came a minute apart: relative recency, and so the LRU
order, is unchanged.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import psutil  # noqa: E402
from PIL import Image  # noqa: E402

from testkit.cog_server import CogServer  # noqa: E402
from testkit.fakes.lora_servers import FakeVersion, trainer_tar  # noqa: E402
from testkit.lora_sites import LoraSites, tiny_lora_bytes, tiny_lora_shapes  # noqa: E402

RSS_GROWTH_LIMIT = 0.05
DEFAULT_WARMUP = 60
RSS_MIN_WARMUP = 60  # predictions until every request shape, all six 1 MP sizes included, has run once
RSS_MIN_STEADY = 40  # predictions after the warm-up: two 20-prediction windows to compare
MAX_ADAPTERS = 2
URL_LORAS = 6  # distinct plain-URL LoRAs, used in turns of URL_TURN predictions: they force evictions
URL_TURN = 12

ASPECTS = ["1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21", "custom"]
FORMATS = ["webp", "jpg", "png"]
SCALES = [1.0, 0.5, 0.8, -0.5, 1.5, 0.0, 0.3]
# (main, extra) per prediction, in turn; "url" is the URL LoRA of the current turn.
LORA_PLAN = [
    (None, None),
    ("replicate", None),
    ("hf", None),
    ("civitai", None),
    ("url", None),
    ("replicate", "hf"),
    ("civitai_link", "url"),
    ("data", None),
    (None, "hf"),
    ("hf", "replicate"),
    ("url", "data"),
]


@dataclass
class Report:
    predictions: int
    warmup: int
    wall_seconds: float = 0.0  # server start to the end, fake sites not included
    setup_seconds: float = 0.0  # the server's start, until READY
    predict_seconds: float = 0.0
    rss_mb: dict = field(default_factory=dict)  # start, after_warmup, end, max (see summarize_rss)
    rss_growth_after_warmup: float = 0.0
    rss_trend_mb_per_100: float = 0.0  # least-squares slope after the warm-up: a leak shows here
    rss_judged: bool = False  # whether the run was long enough to hold RSS growth to its target (rss_judgement)
    max_adapters_resident: int = 0
    leftover_temp_files: list = field(default_factory=list)
    cache_bytes: int = 0
    cache_cap_bytes: int = 0
    cache_entries: int = 0
    evictions: int = 0
    downloads: int = 0
    failures: list = field(default_factory=list)
    rss_trace_mb: list = field(default_factory=list)  # after each prediction
    aged_cache_clock: bool = True
    work_dir: str = ""

    def misses(self) -> list[str]:
        """The targets this run missed, in words; empty when all were met."""
        missed = []
        if self.rss_judged and self.rss_growth_after_warmup >= RSS_GROWTH_LIMIT:
            missed.append(f"RSS grew {self.rss_growth_after_warmup:.1%} after the warm-up (target < 5%)")
        if self.max_adapters_resident > MAX_ADAPTERS:
            missed.append(f"{self.max_adapters_resident} LoRA adapters were resident at once (target <= 2)")
        if self.leftover_temp_files:
            missed.append(f"{len(self.leftover_temp_files)} temp files left: {self.leftover_temp_files[:10]}")
        if self.cache_bytes > self.cache_cap_bytes:
            missed.append(f"the LoRA cache holds {self.cache_bytes} bytes, over its cap of {self.cache_cap_bytes}")
        if self.failures:
            missed.append(f"{len(self.failures)} predictions failed, first: {self.failures[0]}")
        return missed


# -- the workload ------------------------------------------------------------------------------------------


def png_data_uri(size: tuple[int, int], seed: int, mask: bool = False) -> str:
    """A gradient image (or a mask whose right half is white) as a data: URI."""
    width, height = size
    if mask:
        image = Image.new("L", size, 0)
        image.paste(255, (width // 2, 0, width, height))
    else:
        image = Image.linear_gradient("L").resize(size).convert("RGB")
        image.paste((seed * 40 % 256, 90, 160), (0, 0, width // 3, height // 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request(i: int, sources: dict[str, str]) -> dict:
    """Prediction i of the soak: a deterministic mix of every input that changes the code path."""
    inputs: dict = {
        "prompt": f"a photo of TOK, soak {i}",
        "seed": i,
        "model": ("dev", "schnell")[i % 2],
        "num_inference_steps": 1 + i % 3,
        "output_format": FORMATS[(i // 2) % 3],
        "output_quality": 50 + i % 50,
        "go_fast": i % 9 == 4,
        "disable_safety_checker": i % 8 == 3,
        "guidance_scale": (i % 7) * 1.5,
    }
    mode = ("txt2img", "txt2img", "img2img", "txt2img", "inpaint")[i % 5]
    if mode == "txt2img":
        aspect = ASPECTS[i % len(ASPECTS)]
        inputs["aspect_ratio"] = aspect
        if aspect == "custom":
            inputs |= {"width": 256 + 16 * (i % 20), "height": 384 - 8 * (i % 10)}
        inputs["megapixels"] = "1" if i % 10 == 6 else "0.25"  # 1 MP costs ~2 s on CPU: one in ten
    else:
        size = ((320, 240), (256, 384), (400, 400))[i % 3]
        inputs["image"] = png_data_uri(size, i)
        inputs["prompt_strength"] = (0.5, 0.8, 1.0)[i % 3]
        if mode == "inpaint":  # the image's aspect at half the size: resized, never stretched
            inputs["mask"] = png_data_uri((size[0] // 2, size[1] // 2), i, mask=True)
    megapixel = inputs.get("megapixels") == "1"
    inputs["num_outputs"] = 1 if megapixel else (1, 2, 1, 3, 1, 4)[i % 6]
    main, extra = LORA_PLAN[i % len(LORA_PLAN)]
    url = sources.get(f"url{(i // URL_TURN) % URL_LORAS}")
    if main:
        inputs["replicate_weights"] = url if main == "url" else sources[main]
        inputs["lora_scale"] = SCALES[i % len(SCALES)]
    if extra:
        inputs["extra_lora"] = url if extra == "url" else sources[extra]
        inputs["extra_lora_scale"] = SCALES[(i + 3) % len(SCALES)]
    return inputs


def start_sites(weights_dir: Path, folder: Path) -> tuple[LoraSites, dict[str, str], int]:
    """The fake sites with their LoRAs; returns them, the LoRA strings by name, and the largest file's size."""
    shapes = tiny_lora_shapes(weights_dir)
    files = {
        "replicate": tiny_lora_bytes(shapes, "ai_toolkit", folder, 1),
        "hf": tiny_lora_bytes(shapes, "diffusers", folder, 2),
        "civitai": tiny_lora_bytes(shapes, "kohya", folder, 3),
        "data": tiny_lora_bytes(shapes, "peft_without_prefix", folder, 4),
    }
    for n in range(URL_LORAS):
        files[f"url{n}"] = tiny_lora_bytes(shapes, ("comfyui", "xlabs", "mixture")[n % 3], folder, 10 + n)
    sites = LoraSites()
    sites.replicate.add_model("alice", "flux-tok", trainer_tar(files["replicate"], trigger_word="TOK"))
    sites.hub.add_repo("bob/flux-style", {"lora.safetensors": files["hf"], "README.md": b"# style"})
    sites.civitai.add_model(1234, [FakeVersion(id=5678, content=files["civitai"], trained_words=["pixelart"])])
    sources = {
        "replicate": "alice/flux-tok",
        "hf": "huggingface.co/bob/flux-style",
        "civitai": "https://civitai.com/models/1234/pixel-art",
        "civitai_link": "https://civitai.com/api/download/models/5678",
        "data": "data:application/octet-stream;base64," + base64.b64encode(files["data"]).decode(),
    }
    for n in range(URL_LORAS):
        sources[f"url{n}"] = sites.files.add_file(f"/loras/style-{n}.safetensors", files[f"url{n}"])
    return sites, sources, max(len(data) for data in files.values())


# -- measurements -----------------------------------------------------------------------------------------


def server_rss(server: CogServer) -> int:
    """Resident bytes of the server process and all its children (coglet's Python worker runs the model)."""
    root = psutil.Process(server.process.pid)
    total = 0
    for process in (root, *root.children(recursive=True)):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def summarize_rss(report: Report, start: int, trace: list[int]) -> None:
    """RSS figures from the per-prediction samples. One sample swings by a few percent (the allocator keeps
    and returns arenas as request sizes change), so "after warm-up" and "end" are medians of a window of up to
    20 predictions: the first after the warm-up and the last of the run."""
    mb = [value / 2**20 for value in trace]
    steady = mb[report.warmup :] or mb[-1:]
    window = max(1, min(20, len(steady) // 4))
    after, end = statistics.median(steady[:window]), statistics.median(steady[-window:])
    report.rss_trace_mb = [round(value, 1) for value in mb]
    report.rss_mb = {"start": start / 2**20, "after_warmup": after, "end": end, "max": max(mb)}
    report.rss_mb = {name: round(value, 1) for name, value in report.rss_mb.items()}
    report.rss_growth_after_warmup = round((end - after) / after, 4)
    if len(steady) > 1:
        report.rss_trend_mb_per_100 = round(100 * statistics.linear_regression(range(len(steady)), steady).slope, 1)


def rss_judgement(predictions: int, warmup: int) -> tuple[bool, str]:
    """Whether RSS growth can be held to its target in a run of this shape, and if not, why not."""
    if warmup < RSS_MIN_WARMUP:
        return False, f"a warm-up of {warmup} < {RSS_MIN_WARMUP} predictions has not run every request shape yet"
    if predictions - warmup < RSS_MIN_STEADY:
        return False, f"{predictions - warmup} < {RSS_MIN_STEADY} predictions after the warm-up"
    return True, ""


def cache_keys(cache_dir: Path) -> set[str]:
    """The committed cache entries: one that disappears between two looks was evicted."""
    return {sidecar.parent.name for sidecar in cache_dir.glob("entries/*/entry.json")}


def cache_size(cache_dir: Path) -> tuple[int, int]:
    """(bytes, entries) of the committed cache entries: what LORA_CACHE_MAX_BYTES caps."""
    sizes = [
        sidecar.parent.joinpath("lora.safetensors").stat().st_size for sidecar in cache_dir.glob("entries/*/entry.json")
    ]
    return sum(sizes), len(sizes)


def leftover_temp_files(temp_dir: Path, baseline: set[str], cache_dir: Path) -> list[str]:
    """What the run left behind once the server has stopped: anything new in its temp folder (outputs, Cog's
    downloaded inputs, stray files; the outputs folder goes when the worker exits) and anything in the cache's
    tmp/."""
    new = [path for path in sorted(temp_dir.rglob("*")) if path.relative_to(temp_dir).parts[0] not in baseline]
    left = [path.relative_to(temp_dir).as_posix() for path in new if path.is_file() or not any(path.iterdir())]
    left.extend(f"cache tmp/{p.relative_to(cache_dir / 'tmp')}" for p in sorted((cache_dir / "tmp").rglob("*")))
    return left


# -- the run ----------------------------------------------------------------------------------------------


def run_soak(
    predictions: int,
    warmup: int,
    weights_dir: Path,
    work_dir: Path,
    *,
    age_clock: bool = True,
    env: dict[str, str] | None = None,
    progress=print,
) -> Report:
    report = Report(predictions=predictions, warmup=warmup, aged_cache_clock=age_clock, work_dir=str(work_dir))
    report.rss_judged = rss_judgement(predictions, warmup)[0]
    cache_dir, temp_dir = work_dir / "lora-cache", work_dir / "tmp"
    temp_dir.mkdir(parents=True, exist_ok=True)
    sites, sources, largest = start_sites(weights_dir, work_dir / "loras")
    # Room for any two LoRAs of one request but not for the 11 files the plan uses: every few predictions evict.
    report.cache_cap_bytes = 3 * largest
    server_env = {
        **(env if env is not None else os.environ),
        **sites.env(),
        "WEIGHTS_DIR": str(weights_dir),
        "FLUX_DEVICE": "cpu",
        "FLUX_DTYPE": "float32",
        "LORA_CACHE_DIR": str(cache_dir),
        "LORA_CACHE_MAX_BYTES": str(report.cache_cap_bytes),
        "TMPDIR": str(temp_dir),  # the outputs folder and Cog's downloaded inputs land here
        "HF_HOME": str(work_dir / "hf-home"),
    }
    if age_clock:  # no in-use window: entries of earlier predictions are evictable at once (see above)
        server_env["LORA_CACHE_IN_USE_SECONDS"] = "0"
    for name in ("HF_TOKEN", "CIVITAI_API_TOKEN", "REPLICATE_API_TOKEN"):
        server_env.pop(name, None)
    server = CogServer(server_env, log_path=work_dir / "server.log")
    started = time.monotonic()
    try:
        server.start()
        baseline = {p.name for p in temp_dir.iterdir()}
        start_rss, trace = server_rss(server), []
        report.setup_seconds = round(time.monotonic() - started, 1)
        for i in range(predictions):
            cached = cache_keys(cache_dir)
            response = server.predict(**request(i, sources))  # once: a 409 is a failure like any other
            body = response.json() if response.status_code == 200 else {"status": f"HTTP {response.status_code}"}
            if body.get("status") != "succeeded":
                report.failures.append(
                    {"index": i, "status": body.get("status"), "error": body.get("error") or response.text[:500]}
                )
            count_loras(report, body.get("metrics") or {})
            report.evictions += len(cached - cache_keys(cache_dir))
            current = server_rss(server)
            trace.append(current)
            if (i + 1) % 25 == 0 or i + 1 == predictions:
                size, entries = cache_size(cache_dir)
                progress(
                    f"{i + 1}/{predictions}: RSS {current / 2**20:.0f} MB, adapters <= {report.max_adapters_resident},"
                    f" cache {size / 1e3:.0f} kB in {entries} entries (cap {report.cache_cap_bytes / 1e3:.0f} kB),"
                    f" {report.evictions} evictions, {len(report.failures)} failures,"
                    f" {time.monotonic() - started:.0f} s"
                )
        report.predict_seconds = round(time.monotonic() - started - report.setup_seconds, 1)
        if server.health().get("status") != "READY":
            report.failures.append({"index": predictions, "status": "server not READY at the end", "error": ""})
        report.wall_seconds = round(time.monotonic() - started, 1)
        summarize_rss(report, start_rss, trace)
        report.cache_bytes, report.cache_entries = cache_size(cache_dir)
    finally:
        server.stop()
        sites.close()
    report.leftover_temp_files = leftover_temp_files(temp_dir, baseline, cache_dir)
    return report


def count_loras(report: Report, metrics: dict) -> None:
    """Adapters resident and LoRAs downloaded, from the prediction's metrics (README, "Metrics")."""
    resident = metrics.get("lora_adapters_resident", 0)
    report.max_adapters_resident = max(report.max_adapters_resident, resident)
    report.downloads += sum(1 for lora in metrics.get("loras", []) if lora.get("fetch") == "download")


def print_report(report: Report) -> None:
    rss = report.rss_mb
    judged, why_not = rss_judgement(report.predictions, report.warmup)
    target = "target < 5%" if judged else f"not judged: {why_not}"
    lines = [
        f"predictions        {report.predictions} ({report.warmup} warm-up) in {report.predict_seconds} s"
        f" ({report.predict_seconds / max(report.predictions, 1):.2f} s each); server setup {report.setup_seconds} s,"
        f" wall {report.wall_seconds} s",
        f"server RSS         start {rss['start']} MB, after warm-up {rss['after_warmup']} MB, end {rss['end']} MB,"
        f" max {rss['max']} MB; growth after warm-up {report.rss_growth_after_warmup:+.1%} ({target}),"
        f" trend {report.rss_trend_mb_per_100:+.1f} MB per 100 predictions",
        f"adapters resident  at most {report.max_adapters_resident} (target <= 2)",
        f"temp files left    {len(report.leftover_temp_files)} (target 0){': ' if report.leftover_temp_files else ''}"
        + ", ".join(report.leftover_temp_files[:10]),
        f"LoRA cache         {report.cache_bytes} bytes in {report.cache_entries} entries, cap {report.cache_cap_bytes}"
        f" ({report.downloads} downloads, {report.evictions} evictions"
        f"{'' if report.aged_cache_clock else ', real clock'})",
        f"failed predictions {len(report.failures)} (target 0; a 409 At capacity counts as one)",
    ]
    print("\n".join(lines))
    misses = report.misses()
    print("RESULT: " + ("all targets met" if not misses else "MISSED: " + "; ".join(misses)))


def ensure_tiny_weights(folder: Path) -> Path:
    if not (folder / "FLUX.1-dev" / "model_index.json").is_file():
        from testkit.tiny_weights import write_tiny_weights

        print(f"Building the tiny weights in {folder}", file=sys.stderr)
        write_tiny_weights(folder)
    return folder


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="script/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--predictions", type=int, default=300)
    parser.add_argument(
        "--warmup",
        type=int,
        help=f"predictions before the RSS baseline (default {DEFAULT_WARMUP}, or half of a shorter run)",
    )
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / ".tiny-weights", help="tiny weights folder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server log, cache, temp files)")
    parser.add_argument("--real-clock", action="store_true", help="keep the cache's 60 s in-use window (see above)")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(DEFAULT_WARMUP, args.predictions // 2)
    if args.predictions < args.warmup + 1:
        parser.error("--predictions must be more than --warmup")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    weights = ensure_tiny_weights(args.weights.resolve())
    work_dir = Path(tempfile.mkdtemp(prefix="flux-soak-"))
    print(f"Soak: {args.predictions} predictions, work folder {work_dir}", file=sys.stderr)
    report = run_soak(args.predictions, args.warmup, weights, work_dir, age_clock=not args.real_clock)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "misses": report.misses()}, indent=2) + "\n")
    misses = report.misses()
    if args.keep or misses:
        print(f"Work folder kept: {work_dir} (server.log, lora-cache/, tmp/)", file=sys.stderr)
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
