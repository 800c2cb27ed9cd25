"""LoRA fetches run in another process, for tests of one cache shared by several processes.

multiprocessing needs an importable target, so these live in a module rather than in a test. Each waits at
`barrier` so that all processes fetch at the same time, and puts what it saw on `results`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lora_loader import LoraFetcher
from serverconfig import ServerConfig


def fetch_in_process(cache_dir: str, environ: dict[str, str], source: str, barrier, results) -> None:
    """Fetch `source` once; report (path, sha256, key) of what the cache gave."""
    fetcher = _fetcher(cache_dir, environ)
    barrier.wait(timeout=30)
    lora = fetcher.fetch(source)
    results.put((str(lora.path), lora.sha256, lora.key))


def fetch_many_in_process(
    cache_dir: str, environ: dict[str, str], sources: list[tuple[str, str]], in_use_seconds: float, barrier, results
) -> None:
    """Fetch each (source, expected sha256) in turn, reading every file back at once; report what was wrong."""
    fetcher = _fetcher(cache_dir, environ, lora_cache_in_use_seconds=in_use_seconds)
    problems = []
    barrier.wait(timeout=30)
    for source, expected in sources:
        try:
            lora = fetcher.fetch(source)
            with lora.path.open("rb") as f:  # what the adapter loader does next
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest != expected or lora.sha256 != expected:
                problems.append(f"{source}: got {digest}, sidecar {lora.sha256}")
        except Exception as error:  # reported to the test, which shows it
            problems.append(f"{source}: {type(error).__name__}: {error}")
    results.put(problems)


def _fetcher(cache_dir: str, environ: dict[str, str], **overrides) -> LoraFetcher:
    return LoraFetcher(ServerConfig.from_env(environ, lora_cache_dir=Path(cache_dir), **overrides))
