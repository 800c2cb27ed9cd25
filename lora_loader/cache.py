"""The LoRA disk cache: complete, validated entries only; one download per entry; LRU under a byte cap.

Layout under LORA_CACHE_DIR:

    entries/<key>/lora.safetensors   the validated file
    entries/<key>/entry.json         sidecar: source (no secrets), size, sha256, trigger words, times
    locks/<key>.lock                 one writer (or evictor) per entry, across threads and processes; the
                                     file exists only while someone holds the lock or waits for it
    locks/cache.lock                 held while making room and committing, so totals stay true
    tmp/<key>/                       the writer's work folder: partial downloads, tar extraction

An entry is built in its tmp folder and renamed into `entries/` in one step, so a reader sees a whole
entry or none; a partial download never sits where a reader looks. Lookups take no lock: they check
that the sidecar and the file agree (size, safetensors header) and mark the entry used by touching the
sidecar, whose mtime is the LRU clock. Writers take the entry lock and look again before downloading,
so callers that race on one LoRA wait for the first one's download instead of repeating it.

Eviction removes least recently used entries until the new one fits. An entry used in the last
`in_use_seconds` (LORA_CACHE_IN_USE_SECONDS, 60 s by default; 0 turns the window off) counts as in use
(its caller may still be loading it, in this or another process), as does one whose lock someone holds;
those are skipped even if the cache then stays over its cap for a while, which is logged. The evictor
looks at the entry's last use again once it holds the entry's lock, and a lookup whose mark-as-used finds
the entry gone reports a miss, so a lookup racing an eviction in another process gets a fresh download
rather than a path that is about to vanish. A file larger than the whole cap is refused before it is
committed. Keys are hashes, so no source string, let alone a token, ends up in a file name.

A full disk fails the write that hit it; the work folder (with whatever part was written) is removed
when the writer's `writing()` block ends, so nothing partial is ever left under `entries/` or `tmp/`.

Lock files do not pile up (one per source ever asked for, bad ones included, would): whoever holds an entry
lock removes its file as the very last step before letting go (`EntryLock.release`), after the writer's
entry is committed or its work folder removed, after an evicted entry is gone. Unlinking a file another
process may be about to lock is the classic race: a waiter that opened the old file locks it after we let
go, while a newcomer creates a new file under the same name and locks that one, and both think they hold
"the" lock. It is designed around in three ways:
- only a holder ever unlinks, and only a lock it holds; so while someone holds the lock on the file the
  path names, no one else can remove or replace that name;
- a lock is held only once its file is still the one the path names: `EntryLock` checks, with the lock
  taken, that the path's inode is the locked descriptor's inode (filelock's `on_acquired` hook), and if it
  is not (the holder removed it meanwhile) lets go and tries again on whatever the path names now
  (filelock itself also refuses a descriptor whose file has no links left);
- the unlink is the holder's last act, so the overlap it allows (a newcomer holding the new file while the
  old holder is still releasing) covers nothing either of them protects.
Evictors and the start-up sweep take an entry lock only when it is free at once, never waiting; the sweep
removes the lock files of writers that died (a dead process's lock is free at once, but its file stays).
`usage()` counts lock files beside entries and work folders, so a leak would show.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from guarded_download import format_size

from .errors import LoraError
from .limits import cache_limit
from .validate import check_safetensors

logger = logging.getLogger(__name__)

LORA_FILE = "lora.safetensors"
SIDECAR = "entry.json"
SIDECAR_FORMAT = 1
LOCK_TIMEOUT_S = 1800.0  # waiting on another caller's download; flock frees a dead holder's lock at once
CACHE_LOCK = "cache.lock"  # the one lock file that stays: it guards the totals, not an entry


@dataclass(frozen=True)
class CacheUsage:
    """What the cache folder holds: complete entries, and what is left beside them."""

    entries: int
    entry_bytes: int
    lock_files: int  # entry locks held or waited on right now, plus any a dead process left
    work_folders: int  # writers' work folders: downloads in progress, or left by a dead process


@dataclass(frozen=True)
class CacheEntry:
    key: str
    path: Path
    size: int
    sha256: str
    source: str
    trigger_words: tuple[str, ...]
    sidecar: dict


class LoraCache:
    def __init__(self, root: Path, max_bytes: int, *, in_use_seconds: float) -> None:
        self.root = Path(root).expanduser().absolute()
        self.max_bytes = max_bytes
        self.in_use_seconds = in_use_seconds
        self.entries_dir, self.locks_dir, self.tmp_dir = (self.root / n for n in ("entries", "locks", "tmp"))
        for folder in (self.entries_dir, self.locks_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned_work()
        self._remove_abandoned_locks()

    # -- reading ---------------------------------------------------------------------------------

    def lookup(self, key: str) -> CacheEntry | None:
        """The complete, valid entry `key`, marked as just used; None when absent or not usable."""
        entry = self._read(key)
        if entry is not None and not _touch(self.entries_dir / key / SIDECAR):
            return None  # evicted between the read and the mark: a miss, not a vanishing path
        return entry

    def _read(self, key: str) -> CacheEntry | None:
        folder = self.entries_dir / key
        try:
            sidecar = json.loads((folder / SIDECAR).read_text())
            path = folder / LORA_FILE
            if sidecar.get("format") != SIDECAR_FORMAT or path.stat().st_size != sidecar["size"]:
                raise ValueError("the sidecar does not match the file")
            check_safetensors(path, "the cached file")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:  # LoraError is a ValueError
            if folder.exists():
                logger.warning("LoRA cache entry %s is unusable (%s); it will be fetched again", key, error)
            return None
        return CacheEntry(
            key=key,
            path=path,
            size=sidecar["size"],
            sha256=sidecar["sha256"],
            source=sidecar.get("source", ""),
            trigger_words=tuple(sidecar.get("trigger_words", ())),
            sidecar=sidecar,
        )

    # -- writing ---------------------------------------------------------------------------------

    @contextmanager
    def writing(self, key: str, source: str) -> Iterator[Path]:
        """Hold `key`'s lock and yield an empty work folder for building it; the folder and the lock file go
        afterwards, whether the entry was committed or not."""
        lock = self._entry_lock(key)
        if not lock.acquire(timeout=0):
            logger.info("LoRA %s: waiting for another download of it to finish", source)
            if not lock.acquire(timeout=LOCK_TIMEOUT_S):
                raise LoraError(
                    f"Another process has been downloading {source} for over {LOCK_TIMEOUT_S / 60:.0f} minutes. "
                    "Try again later."
                )
        work = self.tmp_dir / key
        try:
            shutil.rmtree(work, ignore_errors=True)  # left by a writer that died
            work.mkdir(parents=True)
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
            lock.release()

    def commit(self, key: str, lora_path: Path, sidecar: dict) -> CacheEntry:
        """Install `lora_path` (in `key`'s work folder, writer lock held) as entry `key`, evicting to fit."""
        size = lora_path.stat().st_size
        cache_limit(self.max_bytes).check(sidecar.get("source", "The LoRA"), size)
        staged = lora_path.parent / f".entry-{uuid.uuid4().hex}"
        staged.mkdir()
        os.replace(lora_path, staged / LORA_FILE)
        sidecar = {"format": SIDECAR_FORMAT, "key": key, **sidecar, "size": size}
        sidecar.setdefault("fetched_at", datetime.now(UTC).isoformat(timespec="seconds"))
        _write_sidecar(staged / SIDECAR, sidecar)
        with FileLock(self.locks_dir / CACHE_LOCK, timeout=LOCK_TIMEOUT_S):
            self._make_room(size, keep=key)
            self._remove_entry(key)  # an unusable leftover under the same key
            os.replace(staged, self.entries_dir / key)
        entry = self._read(key)
        if entry is None:  # pragma: no cover - we just wrote it
            raise RuntimeError(f"LoRA cache entry {key} vanished right after it was written")
        return entry

    # -- eviction --------------------------------------------------------------------------------

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self._scan())

    def usage(self) -> CacheUsage:
        entries = self._scan()
        locks = [p for p in self.locks_dir.glob("*.lock") if p.name != CACHE_LOCK]
        work = [p for p in self.tmp_dir.iterdir() if not p.name.startswith(".evicted-")]
        return CacheUsage(len(entries), sum(size for _, size, _ in entries), len(locks), len(work))

    def _scan(self) -> list[tuple[str, int, float]]:
        """(key, size, last used) of every complete entry."""
        found = []
        for folder in self.entries_dir.iterdir():
            try:
                sidecar_path = folder / SIDECAR
                size = int(json.loads(sidecar_path.read_text())["size"])
                found.append((folder.name, size, sidecar_path.stat().st_mtime))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # vanished meanwhile, or unusable: lookup reports and replaces those
        return found

    def _make_room(self, incoming: int, keep: str) -> None:
        entries = [e for e in self._scan() if e[0] != keep]
        total = sum(size for _, size, _ in entries)
        if total + incoming <= self.max_bytes:
            return
        now = time.time()
        for key, size, last_used in sorted(entries, key=lambda e: e[2]):
            if now - last_used < self.in_use_seconds or not self._evict(key):
                continue
            total -= size
            logger.info("LoRA cache: evicted %s (%s, unused for %.0fs)", key, format_size(size), now - last_used)
            if total + incoming <= self.max_bytes:
                return
        usage = self.usage()
        logger.warning(
            "LoRA cache: %s in %s exceeds LORA_CACHE_MAX_BYTES (%s) because the rest is in use; it shrinks on "
            "the next download (%d entries, %d lock files, %d downloads in progress)",
            format_size(total + incoming),
            self.root,
            format_size(self.max_bytes),
            usage.entries,
            usage.lock_files,
            usage.work_folders,
        )

    def _evict(self, key: str) -> bool:
        """Remove entry `key` unless someone holds its lock (they are replacing it) or used it just now."""
        lock = self._entry_lock(key)
        if not lock.acquire(timeout=0):
            return False
        try:
            try:  # looked up since the scan, perhaps by another process: it is in use again
                if time.time() - (self.entries_dir / key / SIDECAR).stat().st_mtime < self.in_use_seconds:
                    return False
            except FileNotFoundError:
                return True  # gone already
            self._remove_entry(key)
        finally:
            lock.release()
        return True

    def _remove_entry(self, key: str) -> None:
        # Renamed away first, so a lookup never sees a half-deleted entry.
        folder = self.entries_dir / key
        doomed = self.tmp_dir / f".evicted-{key}-{uuid.uuid4().hex}"
        try:
            os.replace(folder, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def _remove_abandoned_work(self) -> None:
        """Work folders of writers that died; a folder whose lock is held belongs to a live writer."""
        for folder in self.tmp_dir.iterdir():
            if folder.name.startswith(".evicted-"):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            lock = self._entry_lock(folder.name)
            if not lock.acquire(timeout=0):
                continue
            try:
                shutil.rmtree(folder, ignore_errors=True)
            finally:
                lock.release()

    def _remove_abandoned_locks(self) -> None:
        """Lock files of writers that died holding them (and of versions that never removed them): a lock
        that can be taken at once has no holder, and its holder removes it on release."""
        for path in self.locks_dir.glob("*.lock"):
            if path.name != CACHE_LOCK:
                lock = EntryLock(path)
                if lock.acquire(timeout=0):
                    lock.release()

    def _entry_lock(self, key: str) -> EntryLock:
        return EntryLock(self.locks_dir / f"{key}.lock")


class _Replaced(Exception):
    """The lock was taken on a file its path no longer names (its holder removed it meanwhile)."""


class EntryLock:
    """One entry's lock: a file under locks/, held by one writer or evictor at a time across threads and
    processes, removed by its holder as it lets go (the module docstring says why that is safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._held: tuple[int, int] | None = None  # (device, inode) of the file locked
        self._lock = FileLock(path, on_acquired=self._check_still_named)

    def acquire(self, timeout: float) -> bool:
        """Hold the lock, waiting up to `timeout` seconds (0: only if it is free now); False if not had."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._lock.acquire(timeout=max(deadline - time.monotonic(), 0.0))
                return True
            except Timeout:
                return False
            except _Replaced:
                continue  # lock whatever the path names now (a new file, or none yet)

    def release(self) -> None:
        """Remove the lock file, then let go: the holder's last act (nothing may be done under it after)."""
        try:
            if _identity(self.path) == self._held:  # always so: only holders unlink, and we hold it
                self.path.unlink()
        finally:
            self._held = None
            self._lock.release()

    def _check_still_named(self, fd: int) -> None:
        held = os.fstat(fd)
        if _identity(self.path) != (held.st_dev, held.st_ino):
            raise _Replaced()
        self._held = (held.st_dev, held.st_ino)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return None
    return named.st_dev, named.st_ino


def _write_sidecar(path: Path, sidecar: dict) -> None:
    path.write_text(json.dumps(sidecar, indent=2, sort_keys=True))


def _touch(path: Path) -> bool:
    """Mark the entry used; False when it is gone (evicted meanwhile)."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError:
        pass  # a read-only cache: recency is a hint, not a requirement
    return True
