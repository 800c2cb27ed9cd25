"""generation.compile_settings: FLUX_COMPILE's decision, the on-disk compile caches and the mega-cache file that
lets a restarted server skip recompiling, and inductor settings chosen explicitly (torchao changes them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch._functorch.config as functorch_config
import torch._inductor.config as inductor_config
from torch.compiler._cache import CacheArtifactManager

from generation import compile_settings
from generation.compile_settings import (
    MEGA_CACHE_FILE,
    choose_inductor_settings,
    compile_enabled,
    configure_compile_cache,
    load_cache_artifacts,
    reassert_inductor_settings,
    save_cache_artifacts,
)
from serverconfig import ServerConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def torch_settings(monkeypatch) -> Iterator[None]:
    """These functions change process-wide torch state: each test gets it back as it found it."""
    inductor, functorch = inductor_config.get_config_copy(), functorch_config.get_config_copy()
    for variable in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(variable, os.environ.get(variable, "unset"))  # restored (or removed) at teardown
        if os.environ[variable] == "unset":
            monkeypatch.delenv(variable)
    monkeypatch.setattr(compile_settings, "_chosen", None)
    yield
    inductor_config.load_config(inductor)
    functorch_config.load_config(functorch)


@pytest.mark.parametrize(
    ("mode", "device", "enabled", "reason"),
    [
        ("auto", "cuda", True, "FLUX_COMPILE=auto: compiled on cuda"),
        ("auto", "cuda:1", True, "FLUX_COMPILE=auto: compiled on cuda:1"),
        ("auto", "cpu", False, "FLUX_COMPILE=auto: not compiled on cpu (compiling FLUX on a cpu takes minutes)"),
        ("on", "cpu", True, "FLUX_COMPILE=on: compiled on cpu"),
        ("off", "cuda", False, "FLUX_COMPILE=off: not compiled"),
    ],
)
def test_compile_enabled_by_mode_and_device(mode: str, device: str, enabled: bool, reason: str) -> None:
    assert compile_enabled(mode, device) == (enabled, reason)
    assert compile_enabled(ServerConfig(device="cpu", compile=mode), device) == (enabled, reason)


def test_compile_enabled_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="FLUX_COMPILE must be one of auto, on, off, not 'yes'"):
        compile_enabled("yes", "cuda")


def test_configure_compile_cache_points_every_cache_into_the_folder(tmp_path: Path, torch_settings) -> None:
    inductor_config.fx_graph_cache = False
    functorch_config.enable_autograd_cache = False

    cache = configure_compile_cache(tmp_path / "cache")

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "inductor") == str(cache.inductor_dir)
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "triton") == str(cache.triton_dir)
    assert cache.inductor_dir.is_dir() and cache.triton_dir.is_dir()
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(cache.inductor_dir)  # what inductor's caches really use
    assert inductor_config.fx_graph_cache and functorch_config.enable_autograd_cache
    assert inductor_config.bundle_triton_into_fx_graph_cache and inductor_config.autotune_local_cache
    assert cache.effective and not cache.caches_force_disabled


def test_nothing_to_load_or_save(tmp_path: Path) -> None:
    assert load_cache_artifacts(tmp_path).status == "missing"
    (tmp_path / MEGA_CACHE_FILE).write_bytes(b"not a cache")
    unreadable = load_cache_artifacts(tmp_path)
    assert (unreadable.status, unreadable.bytes, unreadable.artifacts) == ("unreadable", 11, {})

    with CacheArtifactManager.with_fresh_cache():  # a process that compiled nothing
        saved = save_cache_artifacts(tmp_path / "new")
    assert saved.status == "nothing" and not (tmp_path / "new").exists()


# A "restart" in one fresh process: compile and save into folder a; then nothing in memory, an empty folder b
# holding only the saved file, load it and compile again: the compiled graph must come from the file. The
# function is one matmul, which inductor hands to aten (no C++ kernel to build), so the round trip takes seconds.
ROUND_TRIP = """
import json, shutil, sys
from pathlib import Path
import torch
from torch._dynamo.utils import counters
from torch._inductor.utils import clear_caches
from torch.compiler._cache import CacheArtifactManager
from generation import compile_settings as cs

a, b = Path(sys.argv[1]) / "a", Path(sys.argv[1]) / "b"
def f(x):
    return torch.mm(x, x.t())
report = {"configured": str(cs.configure_compile_cache(a).inductor_dir)}
cs.choose_inductor_settings()
torch.compile(f, backend="inductor")(torch.ones(4, 4))
report["first"] = dict(counters["inductor"])
saved = cs.save_cache_artifacts(a)
report["saved"] = [saved.status, saved.bytes, saved.artifacts, saved.path.is_file()]
report["saved_again"] = cs.save_cache_artifacts(a).bytes  # everything so far, again: the same file

torch._dynamo.reset(); clear_caches(); CacheArtifactManager.clear(); counters.clear()
b.mkdir()
shutil.copy(a / cs.MEGA_CACHE_FILE, b / cs.MEGA_CACHE_FILE)
cs.configure_compile_cache(b)
loaded = cs.load_cache_artifacts(b)
report["loaded"] = [loaded.status, loaded.bytes, loaded.artifacts]
out = torch.compile(f, backend="inductor")(torch.ones(4, 4))
report["second"] = dict(counters["inductor"]) | dict(counters["aot_autograd"])
report["correct"] = bool((out == 4).all())
report["leftovers"] = sorted(p.name for p in a.iterdir() if p.name.endswith(".tmp"))
print(json.dumps(report))
"""


def test_a_restarted_process_loads_the_saved_artifacts_instead_of_compiling(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    for variable in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_FORCE_DISABLE_CACHES"):
        env.pop(variable, None)
    done = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["configured"] == str(tmp_path / "a" / "inductor")
    assert report["first"]["fxgraph_cache_miss"] == 1  # really compiled
    status, size, artifacts, is_file = report["saved"]
    assert (status, is_file) == ("saved", True) and size > 0
    assert artifacts == {"inductor": 1, "aot_autograd": 1}
    assert report["saved_again"] == size and report["leftovers"] == []
    assert report["loaded"] == ["loaded", size, {"inductor": 1, "aot_autograd": 1}]
    assert report["second"].get("autograd_cache_hit") == 1 and "fxgraph_cache_miss" not in report["second"]
    assert report["correct"]


def test_inductor_settings_are_ours_again_after_torchao_quantizes(torch_settings, monkeypatch) -> None:
    import torchao.quantization.quant_api as quant_api
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    chosen = choose_inductor_settings()
    assert chosen["coordinate_descent_tuning"] is False and chosen["max_autotune"] is False
    assert chosen == choose_inductor_settings()  # idempotent
    # torchao refuses fp8 without an fp8 GPU; its settings change comes before that check, the rest runs on CPU.
    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    layer = torch.nn.Sequential(torch.nn.Linear(32, 32, dtype=torch.bfloat16))

    quantize_(layer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))

    assert inductor_config.coordinate_descent_tuning is True  # what torchao does to the whole process
    drift = reassert_inductor_settings()
    assert drift == {
        "coordinate_descent_tuning": (True, False),
        "coordinate_descent_check_all_directions": (True, False),
        "force_fuse_int_mm_with_mul": (True, False),
    }
    assert {name: compile_settings._get(name) for name in chosen} == chosen
    assert (inductor_config.coordinate_descent_tuning, inductor_config.max_autotune) == (False, False)
    assert inductor_config.freezing is False and inductor_config.triton.cudagraphs is False
    assert reassert_inductor_settings() == {}


def test_coordinate_descent_can_be_chosen_on_and_stays_chosen(torch_settings) -> None:
    assert choose_inductor_settings(coordinate_descent_tuning=True)["coordinate_descent_tuning"] is True
    inductor_config.coordinate_descent_tuning = False

    assert reassert_inductor_settings() == {"coordinate_descent_tuning": (False, True)}
    assert inductor_config.coordinate_descent_tuning is True
