"""The LoRA disk cache: a cached LoRA costs no request, concurrent callers (threads and processes)
share one download, partial or damaged files are never served, least recently used entries make room
under LORA_CACHE_MAX_BYTES, and entries fetched with a token stay with that token.

Real HTTP against loopback fakes; LORA_ALLOW_PRIVATE_URLS=1 lets the fetcher reach them."""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from guarded_download import RetryPolicy
from lora_loader import LoraError, LoraFetcher
from lora_loader.cache import LORA_FILE, SIDECAR
from serverconfig import ServerConfig
from testkit.fakes.lora_servers import FakeVersion, lora_bytes, make_tar, trainer_tar
from testkit.fetch_workers import fetch_in_process
from testkit.helpers import digest
from testkit.lora_sites import LoraSites

HF_TOKEN = "hf_CacheTestTokenForTheFakeHub012345"
CIVITAI_TOKEN = "civitaiCacheTestKey0123456789abcdef"
REPLICATE_TOKEN = "r8_CacheTestReplicateToken01234567"
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)


@pytest.fixture
def fakes(lora_sites: LoraSites) -> LoraSites:
    lora_sites.reset()
    lora_sites.hub.tokens.add(HF_TOKEN)
    return lora_sites


@pytest.fixture
def environ(tmp_path: Path, fakes: LoraSites) -> dict[str, str]:
    return {**fakes.env(), "LORA_CACHE_DIR": str(tmp_path / "cache")}


@pytest.fixture
def make_fetcher(environ: dict[str, str]):
    def make(**options) -> LoraFetcher:
        env = {**environ, **{k: v for k, v in options.items() if k.isupper()}}
        overrides = {k: v for k, v in options.items() if not k.isupper()}  # typed ServerConfig fields
        return LoraFetcher(ServerConfig.from_env(env, **overrides), retry=FAST_RETRY)

    return make


def backdate(fetcher: LoraFetcher, key: str, seconds: float) -> None:
    sidecar = fetcher.cache.entries_dir / key / SIDECAR
    past = time.time() - seconds
    os.utime(sidecar, (past, past))


# -- hits ----------------------------------------------------------------------------------------------


def test_a_cached_lora_makes_no_request_at_all(fakes, make_fetcher, caplog) -> None:
    fakes.files.add_file("/a.safetensors", lora_bytes(1))
    fakes.replicate.add_model("o", "m", trainer_tar(lora_bytes(2)))
    fakes.civitai.add_model(3, [FakeVersion(30, lora_bytes(3), trained_words=["civ"])])
    fakes.hub.add_repo("o/r", {"lora.safetensors": lora_bytes(4), "README.md": b"# r"})
    sources = [fakes.files.url("/a.safetensors"), "o/m", "civitai.com/models/3", "civitai.com/api/download/models/30"]
    sources.append("huggingface.co/o/r")
    first = [make_fetcher().fetch(s) for s in sources]
    fakes.clear_requests()

    caplog.set_level(logging.INFO)
    again = [make_fetcher().fetch(s) for s in sources]  # a new fetcher: as in a restarted process

    assert fakes.requests == []
    assert again == first
    assert caplog.text.count("cache hit") == len(sources)
    assert first[2].trigger_words == again[2].trigger_words == ("civ",)


def test_sidecar_records_the_entry_without_secrets(fakes, make_fetcher) -> None:
    data = lora_bytes(5, metadata={"modelspec.trigger_phrase": "neon"})
    fakes.files.add_file("/s.safetensors", data, signature="TopSecretSig")
    lora = make_fetcher().fetch(fakes.files.url("/s.safetensors?sig=TopSecretSig"))

    sidecar = json.loads((lora.path.parent / SIDECAR).read_text())

    assert sidecar["source"] == lora.source == f"{fakes.files.base_url}/s.safetensors?…"
    assert sidecar["size"] == lora.size == len(data)
    assert sidecar["sha256"] == lora.sha256 and sidecar["trigger_words"] == ["neon"]
    assert sidecar["fetched_at"] and sidecar["authenticated"] is False
    assert "TopSecretSig" not in json.dumps(sidecar)
    assert lora.path.name == LORA_FILE and lora.path.parent.name == lora.key


# -- one download for concurrent callers ------------------------------------------------------------------


def test_threads_asking_for_one_lora_share_one_download(fakes, make_fetcher) -> None:
    data = lora_bytes(6, padding=100_000)
    url = fakes.files.add_file("/shared.safetensors", data, delay=0.3)
    fetcher = make_fetcher()
    results, barrier = [], threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        results.append(fetcher.fetch(url))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 4 and len({r.path for r in results}) == 1
    assert digest(results[0].path.read_bytes()) == digest(data)
    assert len(fakes.files.gets("/shared.safetensors")) == 1


def test_processes_sharing_the_cache_share_one_download(fakes, environ) -> None:
    data = lora_bytes(7, padding=100_000)
    url = fakes.files.add_file("/multi.safetensors", data, delay=0.5)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    cache_dir = environ["LORA_CACHE_DIR"]
    processes = [
        context.Process(target=fetch_in_process, args=(cache_dir, environ, url, barrier, results)) for _ in range(2)
    ]
    for process in processes:
        process.start()
    got = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert [p.exitcode for p in processes] == [0, 0]
    assert got[0] == got[1] and digest(Path(got[0][0]).read_bytes()) == digest(data)
    assert len(fakes.files.gets("/multi.safetensors")) == 1


# -- never a partial or invalid file ------------------------------------------------------------------------


def test_damaged_entries_are_fetched_again_not_served(fakes, make_fetcher, caplog) -> None:
    data = lora_bytes(8)
    url = fakes.files.add_file("/d.safetensors", data)
    lora = make_fetcher().fetch(url)
    with lora.path.open("r+b") as f:
        f.truncate(lora.size - 7)  # as if a disk filled up or someone edited it

    with caplog.at_level(logging.WARNING):
        again = make_fetcher().fetch(url)

    assert "unusable" in caplog.text
    assert digest(again.path.read_bytes()) == digest(data) and len(fakes.files.gets("/d.safetensors")) == 2


def test_an_interrupted_download_leaves_no_entry_and_its_leftovers_are_cleaned(fakes, make_fetcher) -> None:
    data = lora_bytes(9, padding=50_000)
    url = fakes.files.add_file("/i.safetensors", data)
    fakes.files.drop_connection("/i.safetensors", after_bytes=20_000, times=None)
    fetcher = make_fetcher()
    with pytest.raises(LoraError, match="attempts failed"):
        fetcher.fetch(url)
    assert list(fetcher.cache.entries_dir.iterdir()) == []
    # A writer killed mid-download leaves its work folder; the next fetcher removes it.
    stale = fetcher.cache.tmp_dir / "url-deadbeef"
    stale.mkdir()
    (stale / "download.part").write_bytes(data[:1000])

    fakes.files.reset()
    fakes.files.add_file("/i.safetensors", data)
    fetcher = make_fetcher()

    assert not stale.exists()
    assert digest(fetcher.fetch(url).path.read_bytes()) == digest(data)


# -- the cap ----------------------------------------------------------------------------------------------


def test_least_recently_used_entries_are_evicted_under_the_cap(fakes, make_fetcher, caplog) -> None:
    blobs = {name: lora_bytes(i, padding=40_000) for i, name in enumerate("abc")}
    urls = {name: fakes.files.add_file(f"/{name}.safetensors", data) for name, data in blobs.items()}
    size = len(blobs["a"])
    fetcher = make_fetcher(LORA_CACHE_MAX_BYTES=str(int(size * 2.5)))
    a, b = fetcher.fetch(urls["a"]), fetcher.fetch(urls["b"])
    backdate(fetcher, a.key, 3600)
    backdate(fetcher, b.key, 1800)
    fetcher.fetch(urls["a"])  # a hit makes `a` the most recently used
    backdate(fetcher, a.key, 600)  # ... though not "in use" any more

    with caplog.at_level(logging.INFO):
        c = fetcher.fetch(urls["c"])

    assert {p.name for p in fetcher.cache.entries_dir.iterdir()} == {a.key, c.key}
    assert f"evicted {b.key}" in caplog.text
    assert fetcher.cache.total_bytes() <= int(size * 2.5)
    fakes.clear_requests()
    assert digest(fetcher.fetch(urls["a"]).path.read_bytes()) == digest(blobs["a"]) and fakes.requests == []


def test_entries_in_use_are_not_evicted_even_over_the_cap(fakes, make_fetcher, caplog) -> None:
    urls = [fakes.files.add_file(f"/u{i}.safetensors", lora_bytes(i, padding=40_000)) for i in range(2)]
    fetcher = make_fetcher(LORA_CACHE_MAX_BYTES="60000")
    main = fetcher.fetch(urls[0])  # the main LoRA, about to be loaded with the extra one

    with caplog.at_level(logging.WARNING):
        extra = fetcher.fetch(urls[1])

    assert main.path.exists() and extra.path.exists()
    assert "exceeds LORA_CACHE_MAX_BYTES" in caplog.text


def test_the_in_use_window_is_a_setting(fakes, make_fetcher, caplog) -> None:
    """LORA_CACHE_IN_USE_SECONDS: 0 lets the cap evict an entry used a moment ago; a window of an hour keeps
    one used ten minutes ago, over the cap."""
    urls = [fakes.files.add_file(f"/w{i}.safetensors", lora_bytes(20 + i, padding=40_000)) for i in range(3)]
    no_window = make_fetcher(LORA_CACHE_MAX_BYTES="60000", LORA_CACHE_IN_USE_SECONDS="0")
    assert no_window.cache.in_use_seconds == 0

    first, second = no_window.fetch(urls[0]), no_window.fetch(urls[1])

    assert not first.path.exists() and second.path.exists()
    hour = make_fetcher(LORA_CACHE_MAX_BYTES="60000", LORA_CACHE_IN_USE_SECONDS="3600")  # the same cache folder
    backdate(hour, second.key, 600)
    with caplog.at_level(logging.WARNING):
        third = hour.fetch(urls[2])
    assert second.path.exists() and third.path.exists()
    assert "exceeds LORA_CACHE_MAX_BYTES" in caplog.text


def test_a_lora_larger_than_the_whole_cache_is_refused(fakes, make_fetcher) -> None:
    big = lora_bytes(10, padding=100_000)
    url = fakes.files.add_file("/huge.safetensors", big)
    fetcher = make_fetcher(LORA_CACHE_MAX_BYTES="50kB")

    with pytest.raises(LoraError, match=r"more than the whole LoRA cache may hold .*Raise LORA_CACHE_MAX_BYTES"):
        fetcher.fetch(url)
    with pytest.raises(LoraError, match=r"LORA_CACHE_MAX_BYTES"):  # a tar itself larger than the cap
        fetcher.fetch(fakes.replicate.add_model("big", "one", trainer_tar(big)))
    small_archive = make_tar({"lora.safetensors": big}, gzip=True)  # zero padding compresses well
    assert len(small_archive) < 50_000
    with pytest.raises(LoraError, match=r"The LoRA in data:.* is [\d.]+ kB, more than the whole LoRA cache may hold"):
        fetcher.fetch("data:application/gzip;base64," + base64.b64encode(small_archive).decode())
    assert list(fetcher.cache.entries_dir.iterdir()) == []


# -- token scope -----------------------------------------------------------------------------------------


def test_a_lora_fetched_with_a_token_is_not_served_without_it(fakes, make_fetcher) -> None:
    fakes.civitai.token = CIVITAI_TOKEN
    fakes.civitai.add_model(11, [FakeVersion(110, lora_bytes(11))])
    with_token = make_fetcher(CIVITAI_API_TOKEN=CIVITAI_TOKEN).fetch("civitai.com/models/11")

    with pytest.raises(LoraError, match="requires an API token"):
        make_fetcher().fetch("civitai.com/models/11")
    with pytest.raises(LoraError, match="refused CIVITAI_API_TOKEN"):
        make_fetcher(CIVITAI_API_TOKEN="another").fetch("civitai.com/models/11")
    fakes.clear_requests()
    assert make_fetcher(CIVITAI_API_TOKEN=CIVITAI_TOKEN).fetch("civitai.com/models/11") == with_token
    assert fakes.requests == []


def test_public_entries_serve_callers_with_a_token(fakes, make_fetcher) -> None:
    fakes.replicate.add_model("pub", "lora", trainer_tar(lora_bytes(12)))
    public = make_fetcher().fetch("pub/lora")
    fakes.clear_requests()

    assert make_fetcher(REPLICATE_API_TOKEN=REPLICATE_TOKEN).fetch("pub/lora") == public
    assert fakes.requests == []


def test_tokens_never_reach_logs_or_file_names(fakes, make_fetcher, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    fakes.civitai.token = CIVITAI_TOKEN
    fakes.civitai.add_model(13, [FakeVersion(130, lora_bytes(13))])
    fakes.replicate.token = REPLICATE_TOKEN
    fakes.replicate.add_model("tok", "lora", trainer_tar(lora_bytes(14)))
    fakes.hub.add_repo("tok/private", {"lora.safetensors": lora_bytes(15)}, private=True)
    fetcher = make_fetcher(CIVITAI_API_TOKEN=CIVITAI_TOKEN, REPLICATE_API_TOKEN=REPLICATE_TOKEN, HF_TOKEN=HF_TOKEN)

    for source in ("civitai.com/models/13", "tok/lora", "huggingface.co/tok/private"):
        fetcher.fetch(source)
        fetcher.fetch(source)

    tokens = (CIVITAI_TOKEN, REPLICATE_TOKEN, HF_TOKEN)
    assert not any(token in caplog.text for token in tokens)
    stored = [str(p) for p in fetcher.cache.root.rglob("*")]
    stored += [p.read_text() for p in fetcher.cache.root.rglob(SIDECAR)]
    assert stored and not any(token in text for token in tokens for text in stored)
    assert fakes.hub.requests and all(r.authorized for r in fakes.hub.requests if r.server == "hub")


@pytest.mark.parametrize("kind", ["hf", "replicate", "civitai"])
def test_each_tokens_entries_stay_with_that_token(fakes, make_fetcher, kind: str) -> None:
    """Tokens are process-wide settings here (HF_TOKEN, REPLICATE_API_TOKEN, CIVITAI_API_TOKEN), and the
    cache key holds a hash of the token sent: a file fetched with one is never served to a fetcher (a
    process, or a future per-request token) without it, nor with another; the site is asked again."""
    data = lora_bytes(30)
    if kind == "hf":
        fakes.hub.add_repo("team/private", {"lora.safetensors": data}, private=True)
        source, name, token = "huggingface.co/team/private", "HF_TOKEN", HF_TOKEN
    elif kind == "replicate":
        fakes.replicate.token = REPLICATE_TOKEN
        fakes.replicate.add_model("team", "private", trainer_tar(data))
        source, name, token = "team/private", "REPLICATE_API_TOKEN", REPLICATE_TOKEN
    else:
        fakes.civitai.token = CIVITAI_TOKEN
        fakes.civitai.add_model(31, [FakeVersion(310, data)])
        source, name, token = "civitai.com/models/31", "CIVITAI_API_TOKEN", CIVITAI_TOKEN
    fetched = make_fetcher(**{name: token}).fetch(source)
    assert digest(fetched.path.read_bytes()) == digest(data)
    fakes.clear_requests()

    for others in ({}, {name: "another-token-0123456789"}):
        with pytest.raises(LoraError) as caught:
            make_fetcher(**others).fetch(source)
        assert token not in str(caught.value)
    assert fakes.requests, "the site was asked, not the cache"
    fakes.clear_requests()
    assert make_fetcher(**{name: token}).fetch(source) == fetched and fakes.requests == []


def test_url_userinfo_scopes_the_entry_like_a_token_and_is_never_shown(fakes, make_fetcher, caplog) -> None:
    """`http://alice:SECRET@host/x` sends Basic auth; its entry must not answer `http://host/x` or another user's
    credentials without asking the site, which refuses them once the file is private."""
    caplog.set_level(logging.DEBUG)
    files, data = fakes.files, lora_bytes(40)
    url = files.add_file("/private.safetensors", data)
    host = url.removeprefix("http://")
    fetcher = make_fetcher()

    alice = fetcher.fetch(f"http://alice:SECRET@{host}")
    assert digest(alice.path.read_bytes()) == digest(data)
    assert [r.authorization for r in files.gets("/private.safetensors")] == ["Basic YWxpY2U6U0VDUkVU"]
    files.add_page("/private.safetensors", b"Unauthorized", status=401)  # from here on, credentials are checked
    files.clear_requests()

    for other in (url, f"http://mallory:guess@{host}", f"http://alice:WRONG@{host}"):
        with pytest.raises(LoraError, match=r"refused the download \(HTTP 401\)") as caught:
            fetcher.fetch(other)
        assert "guess" not in str(caught.value) and "WRONG" not in str(caught.value)
    assert len(files.gets("/private.safetensors")) == 3, "each was asked upstream, none served from alice's entry"
    files.clear_requests()
    assert fetcher.fetch(f"http://alice:SECRET@{host}") == alice and files.requests == []

    stored = [str(p) for p in fetcher.cache.root.rglob("*")] + [
        p.read_text() for p in fetcher.cache.root.rglob(SIDECAR)
    ]
    assert not [text for text in [caplog.text, *stored] if "SECRET" in text or "alice" in text]


# -- lock files -------------------------------------------------------------------------------------------------


def test_lock_files_go_when_the_fetch_ends_whatever_its_outcome(fakes, make_fetcher) -> None:
    """One lock file per source ever asked for would pile up (20 bad data: URIs left 20)."""
    fetcher = make_fetcher()
    for i in range(20):
        bad = base64.b64encode(b"not a safetensors file %d" % i).decode()
        with pytest.raises(LoraError):
            fetcher.fetch(f"data:application/octet-stream;base64,{bad}")
    good = fetcher.fetch("data:application/octet-stream;base64," + base64.b64encode(lora_bytes(41)).decode())

    usage = fetcher.cache.usage()
    assert (usage.entries, usage.lock_files, usage.work_folders) == (1, 0, 0)
    assert sorted(p.name for p in fetcher.cache.locks_dir.iterdir()) in ([], ["cache.lock"])
    assert good.path.exists()


def test_lock_files_go_with_evicted_entries(fakes, make_fetcher) -> None:
    blobs = [lora_bytes(42 + i, padding=20_000) for i in range(4)]
    fetcher = make_fetcher(LORA_CACHE_MAX_BYTES=str(len(blobs[0]) * 2 + 100), LORA_CACHE_IN_USE_SECONDS="0")
    for i, blob in enumerate(blobs):
        fetcher.fetch(fakes.files.add_file(f"/evict{i}.safetensors", blob))

    usage = fetcher.cache.usage()
    assert (usage.entries, usage.lock_files) == (2, 0)


def test_lock_files_left_by_a_dead_writer_are_swept_but_held_ones_stay(tmp_path: Path) -> None:
    from lora_loader.cache import EntryLock, LoraCache

    cache = LoraCache(tmp_path / "cache", 10**9, in_use_seconds=0)
    for name in ("url-dead1", "hf-dead2"):
        (cache.locks_dir / f"{name}.lock").touch()  # what a process killed while holding them leaves
    held = EntryLock(cache.locks_dir / "url-alive.lock")
    assert held.acquire(timeout=0)

    assert LoraCache(tmp_path / "cache", 10**9, in_use_seconds=0).usage().lock_files == 1  # a new process starts
    assert sorted(p.name for p in cache.locks_dir.glob("*.lock")) == ["url-alive.lock"]
    held.release()
    assert cache.usage().lock_files == 0


def test_removing_lock_files_keeps_one_holder_at_a_time(tmp_path: Path) -> None:
    """Writers on one key, each removing the lock file as it lets go, while others wait on it: a waiter that
    locked the removed file must notice and lock the new one, or two would hold "the" lock at once."""
    from lora_loader.cache import LoraCache

    cache = LoraCache(tmp_path / "cache", 10**9, in_use_seconds=0)
    inside, overlaps, rounds = threading.Lock(), [], []

    def writer() -> None:
        for _ in range(60):
            with cache.writing("url-contended", "a LoRA"):
                if not inside.acquire(blocking=False):
                    overlaps.append(1)
                    continue
                time.sleep(0.0005)
                inside.release()
                rounds.append(1)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert overlaps == [] and len(rounds) == 240
    assert cache.usage().lock_files == 0


def test_a_lock_on_a_file_its_path_no_longer_names_is_not_held(tmp_path: Path) -> None:
    """The check behind the test above, made deterministic: the lock taken on a removed file is refused."""
    from lora_loader.cache import EntryLock, _Replaced

    path = tmp_path / "k.lock"
    path.touch()
    stale = os.open(path, os.O_RDWR)
    path.unlink()
    path.touch()  # the next holder's file
    try:
        with pytest.raises(_Replaced):
            EntryLock(path)._check_still_named(stale)
    finally:
        os.close(stale)
    lock = EntryLock(path)
    assert lock.acquire(timeout=0)
    lock.release()
    assert not path.exists()
