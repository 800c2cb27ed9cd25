"""script/soak's code path, short: 16 predictions over HTTP on the tiny weights, cycling models, modes, sizes,
formats, LoRA sources and scales (the plan's first 16 already use every model, mode and source, and two LoRAs at
once); the same targets as the full soak except RSS growth, which a run this short cannot judge (it is printed,
marked so). The full run (300 predictions, RSS included) is `script/soak`."""

from __future__ import annotations

import importlib.util
import sys

from testkit.cog_server import REPO_ROOT


def load_soak():
    spec = importlib.util.spec_from_file_location("script_soak", REPO_ROOT / "script" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


soak = load_soak()


def test_the_plan_covers_every_model_mode_source_and_two_loras():
    sources = {name: name for name in ("replicate", "hf", "civitai", "civitai_link", "data")}
    sources |= {f"url{n}": f"url{n}" for n in range(soak.URL_LORAS)}
    requests = [soak.request(i, sources) for i in range(40)]
    assert {r["model"] for r in requests} == {"dev", "schnell"}
    assert {"image" in r for r in requests} == {True, False} and any("mask" in r for r in requests)
    assert {r["output_format"] for r in requests} == set(soak.FORMATS)
    assert {r["num_outputs"] for r in requests} == {1, 2, 3, 4}
    assert {r.get("megapixels") for r in requests} >= {"1", "0.25"} and any("width" in r for r in requests)
    used = {r.get(k) for r in requests for k in ("replicate_weights", "extra_lora")} - {None}
    assert used >= {"replicate", "hf", "civitai", "civitai_link", "data", "url0", "url1"}
    assert any("replicate_weights" in r and "extra_lora" in r for r in requests)
    assert any("extra_lora" in r and "replicate_weights" not in r for r in requests)
    assert {r.get("lora_scale") for r in requests} >= {0.0, -0.5, 1.5}


def test_defaults_run_at_any_length_and_rss_is_judged_only_after_a_real_warm_up():
    assert (soak.parse_args([]).predictions, soak.parse_args([]).warmup) == (300, 60)
    assert soak.parse_args(["-n", "30"]).warmup == 15, "a short run's warm-up is half of it"
    assert soak.rss_judgement(300, 60) == (True, "")
    judged, why_not = soak.rss_judgement(30, 15)
    assert not judged and "warm-up of 15 < 60" in why_not
    assert not soak.rss_judgement(90, 60)[0], "30 predictions after the warm-up are too few to compare"
    short = soak.Report(predictions=30, warmup=15, rss_growth_after_warmup=0.2)
    assert short.misses() == [], "an RSS figure that cannot be judged is not a miss"
    full = soak.Report(predictions=300, warmup=60, rss_growth_after_warmup=0.2, rss_judged=True)
    assert full.misses() == ["RSS grew 20.0% after the warm-up (target < 5%)"]


def test_a_short_soak_meets_the_targets(tiny_weights, tmp_path, capsys):
    report = soak.run_soak(16, 4, tiny_weights, tmp_path, progress=lambda line: None)
    soak.print_report(report)
    with capsys.disabled():
        print(f"\nshort soak: RSS {report.rss_mb} (growth {report.rss_growth_after_warmup:+.1%}, not judged)")
    assert report.failures == []
    assert report.max_adapters_resident == 2  # two-LoRA requests ran, and never a third adapter (metrics)
    assert report.leftover_temp_files == []
    assert report.cache_bytes <= report.cache_cap_bytes
    assert report.evictions > 0, "the cap is meant to force evictions"
    assert report.downloads >= report.evictions, "every evicted entry was downloaded first (metrics)"
    assert not report.rss_judged and report.misses() == []
