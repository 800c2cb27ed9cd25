"""Faults of the sites LoRAs (and images) come from, and of the disk they go to, each injected by a fake:
a connection dropped mid-body, a stalled server, 5xx then recovery, a wrong Content-Length, HTML instead
of a file, a full cache (eviction, a file larger than the cap, a full disk), and two processes sharing one
cache under eviction pressure. After each, the next fetch (or prediction) works and the cache folder
holds only complete, valid entries: never a partial file, never a leftover work folder.

First through `LoraFetcher` with short timeouts and backoffs (constructor and environment settings, no
sleeps of our own), then the dropped, stalled and HTML cases through the real Cog server.
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from guarded_download import RetryPolicy
from guarded_download import transfer as guarded_transfer
from lora_loader import LoraError, LoraFetcher
from lora_loader import cache as lora_cache
from lora_loader.cache import LORA_FILE, SIDECAR
from lora_loader.validate import check_safetensors
from serverconfig import ServerConfig
from testkit.cog_server import CogServer
from testkit.fakes.faults import Drip
from testkit.fakes.lora_servers import FakeCivitai, FakeServer, FakeVersion, lora_bytes
from testkit.fetch_workers import fetch_many_in_process
from testkit.helpers import digest, png_bytes
from testkit.lora_sites import tiny_lora_bytes, tiny_lora_shapes

READ_TIMEOUT = "0.3"  # seconds; a stalled fake is given up on after this
HTML = b"<!DOCTYPE html>\n<html><head><title>Cloudflare</title></head><body>Checking your browser</body></html>"


class RecordedSleeps(list):
    """RetryPolicy.sleep that records each backoff instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> RecordedSleeps:
    return RecordedSleeps()


@pytest.fixture
def make_fetcher(tmp_path: Path, civitai: FakeCivitai, sleeps: RecordedSleeps):
    def make(retry: RetryPolicy | None = None, **environ: str) -> LoraFetcher:
        config = ServerConfig.from_env(
            {
                "LORA_CACHE_DIR": str(tmp_path / "cache"),
                "LORA_ALLOW_PRIVATE_URLS": "1",
                "LORA_READ_TIMEOUT": READ_TIMEOUT,
                "LORA_CONNECT_TIMEOUT": "2",
                "CIVITAI_BASE_URL": civitai.base_url,
                **environ,
            }
        )
        retry = retry or RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.04, sleep=sleeps)
        return LoraFetcher(config, retry=retry)

    return make


def valid_entries(root: Path) -> dict[str, str]:
    """{key: sha256} of the cache at `root`, asserting that it holds only complete, valid entries and no
    leftover work folder. Reads the folder directly: a new LoraCache would tidy it first."""
    assert [p.name for p in (root / "tmp").iterdir()] == [], "a work folder or partial download was left"
    entries = {}
    for folder in (root / "entries").iterdir():
        assert sorted(p.name for p in folder.iterdir()) == [SIDECAR, LORA_FILE], folder
        sidecar = json.loads((folder / SIDECAR).read_text())
        data = (folder / LORA_FILE).read_bytes()
        assert len(data) == sidecar["size"] and hashlib.sha256(data).hexdigest() == sidecar["sha256"], folder
        check_safetensors(folder / LORA_FILE, folder.name)
        entries[folder.name] = sidecar["sha256"]
    return entries


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- connection dropped mid-body --------------------------------------------------------------------------------


def test_dropped_connections_resume_and_an_outage_leaves_a_clean_cache(files: FakeServer, make_fetcher) -> None:
    data = lora_bytes(50, padding=300_000)
    url = files.add_file("/drop.safetensors", data)
    files.drop_connection("/drop.safetensors", after_bytes=100_000)
    files.drop_connection("/drop.safetensors", after_bytes=200_000)
    fetcher = make_fetcher()

    assert digest(fetcher.fetch(url).path.read_bytes()) == digest(data)
    assert [r.range for r in files.gets("/drop.safetensors")] == [None, "bytes=100000-", "bytes=200000-"]

    other = lora_bytes(51, padding=100_000)
    broken = files.add_file("/down.safetensors", other)
    files.drop_connection("/down.safetensors", after_bytes=0, times=None)  # every attempt, no byte ever
    with pytest.raises(LoraError, match=r"Could not download LoRA .*down.safetensors: 3 attempts failed"):
        fetcher.fetch(broken)
    assert valid_entries(fetcher.cache.root) == {fetcher.fetch(url).key: sha(data)}

    files.faults.clear()  # the site is back
    assert digest(fetcher.fetch(broken).path.read_bytes()) == digest(other)
    assert sorted(valid_entries(fetcher.cache.root).values()) == sorted([sha(data), sha(other)])


# -- stalled server -----------------------------------------------------------------------------------------------


def test_a_stalled_body_times_out_and_resumes(files: FakeServer, make_fetcher) -> None:
    data = lora_bytes(52, padding=200_000)
    url = files.add_file("/stall.safetensors", data)
    files.stall("/stall.safetensors", after_bytes=80_000, seconds=30)
    started = time.monotonic()

    lora = make_fetcher().fetch(url)

    assert digest(lora.path.read_bytes()) == digest(data)
    assert time.monotonic() - started < 5  # the read timeout, not the server's 30 s
    assert [r.range for r in files.gets("/stall.safetensors")] == [None, "bytes=80000-"]


def test_a_server_that_never_answers_fails_in_bounded_time_with_advice(files: FakeServer, make_fetcher) -> None:
    url = files.add_file("/silent.safetensors", lora_bytes(53), delay=30)  # no headers for 30 s
    stalled = files.add_file("/stuck.safetensors", lora_bytes(54, padding=50_000))
    files.stall("/stuck.safetensors", after_bytes=0, seconds=30, times=None)  # headers, then nothing
    fetcher = make_fetcher()

    for source in (url, stalled):
        started = time.monotonic()
        with pytest.raises(LoraError, match=r"3 attempts failed \(last: ReadTimeout.*raise LORA_READ_TIMEOUT"):
            fetcher.fetch(source)
        assert time.monotonic() - started < 5
    assert valid_entries(fetcher.cache.root) == {}

    files.reset()
    fine = files.add_file("/stuck.safetensors", lora_bytes(54, padding=50_000))
    assert fetcher.fetch(fine).size == len(lora_bytes(54, padding=50_000))
    assert len(valid_entries(fetcher.cache.root)) == 1


# -- 5xx then recovery --------------------------------------------------------------------------------------------


def test_server_errors_back_off_exponentially_then_recover(files: FakeServer, make_fetcher, sleeps) -> None:
    data = lora_bytes(55)
    url = files.add_file("/busy.safetensors", data)
    files.fail("/busy.safetensors", 503, times=2)
    fetcher = make_fetcher()

    assert digest(fetcher.fetch(url).path.read_bytes()) == digest(data)
    assert [r.status for r in files.gets("/busy.safetensors")] == [503, 503, 200]
    assert sleeps == [0.01, 0.02]  # base_delay, doubled

    sleeps.clear()
    down = files.add_file("/down.safetensors", lora_bytes(56))
    files.fail("/down.safetensors", 500, times=100)
    with pytest.raises(LoraError, match=r"3 attempts failed \(last: HTTP 500\)"):
        fetcher.fetch(down)
    assert len(files.gets("/down.safetensors")) == 3 and sleeps == [0.01, 0.02]
    assert len(valid_entries(fetcher.cache.root)) == 1


def test_retry_after_is_honoured_up_to_the_cap(files: FakeServer, make_fetcher, sleeps) -> None:
    url = files.add_file("/later.safetensors", lora_bytes(57))
    files.fail("/later.safetensors", 503, times=1, headers={"Retry-After": "7"})
    files.fail("/later.safetensors", 429, times=1, headers={"Retry-After": "3600"})
    retry = RetryPolicy(attempts=3, base_delay=0.01, max_delay=10, sleep=sleeps)

    assert make_fetcher(retry=retry).fetch(url).size == len(lora_bytes(57))
    assert sleeps == [7, 10]  # the server's word, but never more than max_delay


def test_api_errors_are_retried_too(civitai: FakeCivitai, make_fetcher, sleeps) -> None:
    civitai.add_model(5, [FakeVersion(50, lora_bytes(58))])
    civitai.site.fail("/api/v1/models/5", 502, times=1)

    assert digest(make_fetcher().fetch("civitai.com/models/5").path.read_bytes()) == digest(lora_bytes(58))
    assert [r.status for r in civitai.site.requests][:2] == [502, 200] and sleeps == [0.01]


# -- wrong Content-Length -----------------------------------------------------------------------------------------


def test_a_body_shorter_than_announced_is_retried_never_kept(files: FakeServer, make_fetcher) -> None:
    data = lora_bytes(59, padding=50_000)
    url = files.add_file("/short.safetensors", data, ranges=False)
    files.wrong_length("/short.safetensors", announced=len(data) + 1000)  # once: the next answer is right
    fetcher = make_fetcher()

    assert digest(fetcher.fetch(url).path.read_bytes()) == digest(data)
    assert len(files.gets("/short.safetensors")) == 2

    liar = files.add_file("/liar.safetensors", lora_bytes(60, padding=50_000), ranges=False)
    files.wrong_length("/liar.safetensors", announced=len(lora_bytes(60, padding=50_000)) + 1000, times=None)
    # One attempt with progress (the short body), then three that add nothing: the retry policy allows 3.
    with pytest.raises(LoraError, match=r"4 attempts failed \(last: RemoteProtocolError"):
        fetcher.fetch(liar)
    assert list(valid_entries(fetcher.cache.root).values()) == [sha(data)]


def test_a_body_longer_than_announced_is_cut_there_and_refused_as_damaged(files: FakeServer, make_fetcher) -> None:
    data = lora_bytes(61, padding=50_000)
    url = files.add_file("/long.safetensors", data)
    files.wrong_length("/long.safetensors", announced=len(data) - 5000)
    fetcher = make_fetcher()

    with pytest.raises(LoraError, match=r"not a valid .safetensors file \(.*truncated or damaged"):
        fetcher.fetch(url)
    assert valid_entries(fetcher.cache.root) == {}
    assert digest(fetcher.fetch(url).path.read_bytes()) == digest(data)  # the fault was once; the next fetch is whole


# -- HTML instead of a file ---------------------------------------------------------------------------------------


def test_html_instead_of_a_file_is_named_and_not_cached(files: FakeServer, make_fetcher) -> None:
    url = files.add_page("/lora.safetensors", HTML)
    fetcher = make_fetcher()

    with pytest.raises(LoraError, match=r"got an HTML page \(the first bytes look like <!DOCTYPE html>"):
        fetcher.fetch(url)
    assert valid_entries(fetcher.cache.root) == {}
    files.add_file("/lora.safetensors", lora_bytes(62))
    assert digest(fetcher.fetch(url).path.read_bytes()) == digest(lora_bytes(62))


def test_a_redirect_loop_fails_at_once_with_advice_and_caches_nothing(files: FakeServer, make_fetcher, sleeps) -> None:
    files.add_redirect("/a.safetensors", files.url("/b.safetensors"))
    url = files.add_redirect("/b.safetensors", files.url("/a.safetensors"))
    fetcher = make_fetcher()

    with pytest.raises(LoraError, match=r"/b.safetensors redirects again and again \(more than 10 times\)"):
        fetcher.fetch(url)
    assert sleeps == [] and len(files.requests) == 11, "no retry: a loop stays a loop"
    assert valid_entries(fetcher.cache.root) == {}


# -- the cache is full --------------------------------------------------------------------------------------------


def test_a_full_cache_evicts_least_recently_used_entries(files: FakeServer, make_fetcher) -> None:
    blobs = [lora_bytes(70 + i, padding=40_000) for i in range(5)]
    urls = [files.add_file(f"/e{i}.safetensors", blob) for i, blob in enumerate(blobs)]
    cap = int(len(blobs[0]) * 2.5)
    fetcher = make_fetcher(LORA_CACHE_IN_USE_SECONDS="0", LORA_CACHE_MAX_BYTES=str(cap))

    for url, blob in zip(urls, blobs, strict=True):
        assert digest(fetcher.fetch(url).path.read_bytes()) == digest(blob)
        entries = valid_entries(fetcher.cache.root)
        assert len(entries) <= 2 and fetcher.cache.total_bytes() <= cap
    assert sorted(entries.values()) == sorted(sha(b) for b in blobs[-2:])


def test_a_file_larger_than_the_whole_cache_is_a_clear_error(files: FakeServer, make_fetcher) -> None:
    url = files.add_file("/huge.safetensors", lora_bytes(75, padding=100_000))
    fetcher = make_fetcher(LORA_CACHE_MAX_BYTES="60kB")

    with pytest.raises(LoraError, match=r"more than the whole LoRA cache may hold .*Raise LORA_CACHE_MAX_BYTES"):
        fetcher.fetch(url)
    assert valid_entries(fetcher.cache.root) == {}
    assert fetcher.fetch(files.add_file("/small.safetensors", lora_bytes(76))).size == len(lora_bytes(76))


def test_a_full_disk_while_downloading_is_a_clear_error_and_leaves_nothing(files, make_fetcher, monkeypatch) -> None:
    """The disk is simulated at the one place the cache's downloads write (`_DownloadState._write`, which
    writes into the entry's work folder): after 64 kB it raises ENOSPC as a full disk would. What is under
    test is the cache's reaction, so the rest (HTTP, validation, commit) is real."""
    data = lora_bytes(77, padding=200_000)
    url = files.add_file("/disk.safetensors", data)
    real_write = guarded_transfer._DownloadState._write

    def full_disk(self, out, chunk: bytes) -> None:
        if self.written + len(chunk) > 64_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, out, chunk)

    monkeypatch.setattr(guarded_transfer._DownloadState, "_write", full_disk)
    fetcher = make_fetcher()
    with pytest.raises(LoraError, match=r"The disk holding the LoRA cache \(.*\) is full.*nothing partial") as caught:
        fetcher.fetch(url)
    assert isinstance(caught.value.__cause__, OSError)  # the original error and its traceback are kept
    assert len(files.gets("/disk.safetensors")) == 1  # a full disk is not retried
    assert valid_entries(fetcher.cache.root) == {}

    monkeypatch.undo()  # space was freed
    assert digest(fetcher.fetch(url).path.read_bytes()) == digest(data)
    assert list(valid_entries(fetcher.cache.root).values()) == [sha(data)]


def test_a_full_disk_while_committing_leaves_no_half_entry(files, make_fetcher, monkeypatch) -> None:
    """The same simulated disk at the cache's other write, the sidecar of a new entry: half of it is
    written, then ENOSPC."""
    data = lora_bytes(78)
    url = files.add_file("/commit.safetensors", data)

    def full_disk(path: Path, sidecar: dict) -> None:
        path.write_text(json.dumps(sidecar)[:20])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lora_cache, "_write_sidecar", full_disk)
    fetcher = make_fetcher()
    with pytest.raises(LoraError, match="is full"):
        fetcher.fetch(url)
    assert valid_entries(fetcher.cache.root) == {}
    monkeypatch.undo()
    assert digest(fetcher.fetch(url).path.read_bytes()) == digest(data)


# -- two processes, one cache -------------------------------------------------------------------------------------


def test_processes_sharing_a_cache_under_eviction_pressure_never_see_a_bad_file(files: FakeServer, tmp_path) -> None:
    """Three processes fetch six LoRAs (each in its own order, overlapping) into one cache that holds
    three: downloads, hits and evictions interleave across processes. Every file a fetch returns must be
    readable and right, and the cache must end with valid entries only, within its cap."""
    blobs = [lora_bytes(80 + i, padding=30_000) for i in range(6)]
    sources = [(files.add_file(f"/p{i}.safetensors", b, delay=0.02), sha(b)) for i, b in enumerate(blobs)]
    cap = len(blobs[0]) * 3 + 1000
    environ = {"LORA_CACHE_DIR": str(tmp_path / "cache"), "LORA_ALLOW_PRIVATE_URLS": "1"}
    environ["LORA_CACHE_MAX_BYTES"] = str(cap)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    orders = [sources * 2, list(reversed(sources)) * 2, (sources[1::2] + sources[::2]) * 2]
    args = (environ["LORA_CACHE_DIR"], environ)
    processes = [
        context.Process(target=fetch_many_in_process, args=(*args, order, 0.05, barrier, results)) for order in orders
    ]
    for process in processes:
        process.start()
    problems = [results.get(timeout=90) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert problems == [[], [], []]
    entries = valid_entries(tmp_path / "cache")
    assert set(entries.values()) <= {s for _, s in sources}
    downloads = sum(len(files.gets(f"/p{i}.safetensors")) for i in range(6))
    assert downloads > 6, "the cap forced evictions and downloads again"
    time.sleep(0.1)  # past the in-use window: the next download trims the cache to its cap
    last = files.add_file("/last.safetensors", lora_bytes(90))
    LoraFetcher(ServerConfig.from_env({**environ, "LORA_CACHE_IN_USE_SECONDS": "0.05"})).fetch(last)
    assert sum(json.loads((p / SIDECAR).read_text())["size"] for p in (tmp_path / "cache/entries").iterdir()) <= cap


# -- through the real Cog server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_loras(tiny_weights, tmp_path_factory) -> list[bytes]:
    shapes = tiny_lora_shapes(tiny_weights)
    folder = tmp_path_factory.mktemp("fault-loras")
    return [tiny_lora_bytes(shapes, "ai_toolkit", folder, seed) for seed in (1, 2, 3)]


@pytest.fixture(scope="module")
def server_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fault-server-cache")


@pytest.fixture(scope="module")
def server(tiny_env, server_cache, tmp_path_factory):
    env = {**tiny_env, "LORA_CACHE_DIR": str(server_cache), "LORA_READ_TIMEOUT": "0.5", "LORA_CONNECT_TIMEOUT": "2"}
    running = CogServer(env, log_path=tmp_path_factory.mktemp("faults") / "server.log").start()
    yield running
    running.stop()


BASE = {"prompt": "a photo of TOK", "num_inference_steps": 1, "megapixels": "0.25", "seed": 3, "output_format": "png"}


def predict(server: CogServer, **inputs) -> dict:
    response = server.predict(**{**BASE, **inputs})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_server_rides_out_dropped_and_stalled_downloads_and_fails_html_clearly(
    server, files, tiny_loras, server_cache
) -> None:
    dropped = files.add_file("/dropped.safetensors", tiny_loras[0])
    files.drop_connection("/dropped.safetensors", after_bytes=len(tiny_loras[0]) // 2)
    stalled = files.add_file("/stalled.safetensors", tiny_loras[1])
    files.stall("/stalled.safetensors", after_bytes=len(tiny_loras[1]) // 3, seconds=30)
    html = files.add_page("/html.safetensors", HTML)

    assert predict(server, replicate_weights=dropped)["status"] == "succeeded"
    assert [r.range is not None for r in files.gets("/dropped.safetensors")] == [False, True]
    assert predict(server, replicate_weights=stalled)["status"] == "succeeded"
    assert [r.range is not None for r in files.gets("/stalled.safetensors")] == [False, True]
    body = predict(server, replicate_weights=html)
    assert body["status"] == "failed" and "got an HTML page" in body["error"], body
    assert server.health()["status"] == "READY"

    files.add_file("/html.safetensors", tiny_loras[2])  # the site now serves the file: the next try works
    assert predict(server, replicate_weights=html, extra_lora=dropped)["status"] == "succeeded"
    assert sorted(valid_entries(server_cache).values()) == sorted(sha(b) for b in tiny_loras)


def test_the_server_downloads_image_urls_under_the_cap(server, files) -> None:

    photo = files.add_file("/photo.png", png_bytes((96, 64)), content_type="image/png")
    body = predict(server, image=photo, prompt_strength=0.5)
    assert body["status"] == "succeeded", body

    files.add_file("/huge.png", png_bytes(), content_type="image/png")
    files.wrong_length("/huge.png", announced=200 * 2**20)  # announces 200 MiB
    body = predict(server, image=files.url("/huge.png"))
    assert body["status"] == "failed" and "more than an input image may be (104.9 MB)" in body["error"], body
    assert server.health()["status"] == "READY"


def test_an_entry_looked_up_while_it_is_being_evicted_is_kept(files: FakeServer, make_fetcher) -> None:
    """Another process's lookup may mark an entry used after this one's scan found it old: the evictor
    looks again once it holds the entry's lock and keeps it."""
    url = files.add_file("/kept.safetensors", lora_bytes(91))
    fetcher = make_fetcher()
    lora = fetcher.fetch(url)
    sidecar = fetcher.cache.entries_dir / lora.key / SIDECAR
    old = time.time() - 3600
    os.utime(sidecar, (old, old))
    scanned = fetcher.cache._scan()  # the evictor's view: unused for an hour
    assert [(key, round(time.time() - used)) for key, _, used in scanned] == [(lora.key, 3600)]

    assert fetcher.cache.lookup(lora.key) is not None  # the other process's lookup
    assert fetcher.cache._evict(lora.key) is False
    assert lora.path.exists()
    os.utime(sidecar, (old, old))
    assert fetcher.cache._evict(lora.key) is True and not lora.path.exists()


# -- senders that drip (issue 11, point 2) ------------------------------------------------------------------------

PACED = {"DOWNLOAD_MIN_BYTES_PER_SECOND": "1kB", "DOWNLOAD_RATE_WINDOW_SECONDS": "0.5"}


def test_a_lora_url_that_drips_fails_one_window_in_with_the_setting_to_change(files: FakeServer, make_fetcher) -> None:
    url = files.add_file("/drip.safetensors", lora_bytes(92, padding=5_000_000))  # 5 MB, one byte each 0.05 s
    files.drip("/drip.safetensors", bytes_per_tick=1, interval=0.05)
    fetcher = make_fetcher(**PACED)
    started = time.monotonic()

    with pytest.raises(
        LoraError, match=r"Could not download LoRA .*drip.safetensors: only \d+ B arrived in the last "
    ) as caught:
        fetcher.fetch(url)

    assert time.monotonic() - started < 3
    assert str(caught.value).endswith("An operator can lower DOWNLOAD_MIN_BYTES_PER_SECOND for slow sites.")
    assert len(files.gets("/drip.safetensors")) == 1, "a drip is not retried"
    assert valid_entries(fetcher.cache.root) == {}


def test_a_civitai_api_answer_that_drips_fails_too(civitai: FakeCivitai, make_fetcher) -> None:
    civitai.add_model(6, [FakeVersion(60, lora_bytes(93))])
    answer = civitai.site.routes["/api/v1/models/6"].body
    civitai.site.add_file("/api/v1/models/6", answer, content_type="application/json")  # served as a body can drip
    civitai.site.drip("/api/v1/models/6", bytes_per_tick=1, interval=0.05)

    with pytest.raises(LoraError, match=r"/api/v1/models/6: only \d+ B arrived"):
        make_fetcher(**PACED).fetch("civitai.com/models/6")


def test_a_hugging_face_mirror_that_drips_is_judged_at_its_chunks(lora_sites, make_fetcher) -> None:
    """huggingface_hub reports progress once per 10 MB chunk (its one hook), so the pace is judged there: the
    first chunk of a slow mirror fails it. (The Hub is the operator's endpoint, not a stranger's URL.)"""
    hub = lora_sites.hub
    hub.reset()
    hub.add_repo("slow/lora", {"lora.safetensors": lora_bytes(94, padding=10_600_000)})  # a little over a chunk
    hub.inject(Drip(target=("slow/lora", "lora.safetensors"), bytes_per_tick=2_000_000, interval=0.1))
    fetcher = make_fetcher(
        HF_ENDPOINT=hub.endpoint, DOWNLOAD_MIN_BYTES_PER_SECOND="100MB", DOWNLOAD_RATE_WINDOW_SECONDS="0.2"
    )

    with pytest.raises(LoraError, match=r"Could not download LoRA huggingface.co/slow/lora \(lora.safetensors\): only"):
        fetcher.fetch("huggingface.co/slow/lora")
    assert valid_entries(fetcher.cache.root) == {}
    hub.reset()
