"""Fixtures the tests share: tiny random FLUX/safety weights built offline and services over them (session),
and the fake LoRA sites on loopback (module)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from generation.service import GenerationService
from serverconfig import ServerConfig
from testkit.background import BackgroundRun
from testkit.cog_server import CogServer
from testkit.fakes.lora_servers import FakeCivitai, FakeReplicate, FakeServer
from testkit.lora_sites import LoraSites
from testkit.tiny_weights import write_tiny_weights

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKGROUND_RUNS = pytest.StashKey[dict[str, BackgroundRun]]()

# Commands of ten seconds or more of CPU that share nothing with other tests, by the fixture that gives each: they
# start when the session does, if a selected test uses that fixture, at the lowest CPU priority on the core the rest
# of the suite leaves idle (testkit/background.py). Each writes its outputs into its own folder.
BACKGROUND_COMMANDS = {
    "gpu_check_dry_run": lambda folder: [
        *(sys.executable, REPO_ROOT / "script/gpu_check.py", "--dry", "--repeats", "1", "--repeats-4", "1"),
        *("--out", folder / "report.json"),
    ],
    "lora_bench_run": lambda folder: [
        *(sys.executable, REPO_ROOT / "script/bench.py", "lora", "--tiny", "--repeats", "1"),
        *("--json", folder / "bench.json"),
    ],
}


def pytest_collection_finish(session: pytest.Session) -> None:
    runs = session.config.stash.setdefault(BACKGROUND_RUNS, {})
    if session.config.option.collectonly:
        return
    wanted = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    for name, command in BACKGROUND_COMMANDS.items():
        if name in wanted:
            folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
            runs[name] = BackgroundRun(command(folder), folder)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for run in session.config.stash.get(BACKGROUND_RUNS, {}).values():
        run.stop()
        shutil.rmtree(run.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def gpu_check_dry_run(request) -> BackgroundRun:
    """`script/gpu_check.py --dry --repeats 1 --repeats-4 1`, started with the session; `wait()` for it."""
    return request.config.stash[BACKGROUND_RUNS]["gpu_check_dry_run"]


@pytest.fixture(scope="session")
def lora_bench_run(request) -> BackgroundRun:
    """`script/bench.py lora --tiny --repeats 1`, started with the session; `wait()` for it."""
    return request.config.stash[BACKGROUND_RUNS]["lora_bench_run"]


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """WEIGHTS_DIR with all four folders; its safety models never flag anything."""
    root = tmp_path_factory.mktemp("tiny-weights")
    write_tiny_weights(root)
    return root


@pytest.fixture(scope="session")
def lora_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lora-cache")


@pytest.fixture(scope="session")
def cpu_config(tiny_weights, lora_cache_dir, tmp_path_factory) -> ServerConfig:
    # LoRA URLs in tests point at fakes on loopback, which the default address policy refuses.
    return ServerConfig(
        weights_dir=tiny_weights,
        device="cpu",
        dtype="float32",
        temp_dir=tmp_path_factory.mktemp("outputs"),
        lora_cache_dir=lora_cache_dir,
        allow_private_urls=True,
    )


@pytest.fixture(scope="session")
def service(cpu_config) -> GenerationService:
    return GenerationService.from_config(cpu_config)


@pytest.fixture(scope="session")
def tiny_env(tiny_weights, tmp_path_factory) -> dict[str, str]:
    """Environment for subprocesses (Cog server, script/predict) running on the tiny weights."""
    env = dict(os.environ)
    env.update(WEIGHTS_DIR=str(tiny_weights), FLUX_DEVICE="cpu", FLUX_DTYPE="float32", HF_HUB_OFFLINE="1")
    env.update(LORA_CACHE_DIR=str(tmp_path_factory.mktemp("server-lora-cache")), LORA_ALLOW_PRIVATE_URLS="1")
    return env


@pytest.fixture(scope="session")
def tiny_server(tiny_env, tmp_path_factory) -> Iterator[CogServer]:
    """The real Cog server on the tiny weights with nothing else configured, started once for the modules that
    need no other settings (test_http_server, test_script_predict): each start costs seconds of imports."""
    running = CogServer(tiny_env, log_path=tmp_path_factory.mktemp("tiny-server") / "cog-server.log").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def lora_sites() -> Iterator[LoraSites]:
    """Fake Replicate, CivitAI, Hugging Face and plain-file sites, started once per module: starting their
    seven servers for every test would cost more than the tests. Tests empty what they use (see below)."""
    with LoraSites() as sites:
        yield sites


@pytest.fixture
def files(lora_sites: LoraSites) -> Iterator[FakeServer]:
    """The plain file host, emptied before the test and after it (which ends any stall still holding a
    connection)."""
    lora_sites.files.reset()
    yield lora_sites.files
    lora_sites.files.reset()


@pytest.fixture
def civitai(lora_sites: LoraSites) -> FakeCivitai:
    lora_sites.civitai.reset()
    return lora_sites.civitai


@pytest.fixture
def replicate(lora_sites: LoraSites) -> FakeReplicate:
    lora_sites.replicate.reset()
    return lora_sites.replicate
