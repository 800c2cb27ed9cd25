"""LoRA download settings from the environment (the variable names are part of the contract, DESIGN.md).

Read once into a frozen `LoraSettings`, so a fetcher never sees half-changed configuration. Tokens are
kept out of `repr()`: settings objects end up in logs and tracebacks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LoraError

DEFAULT_CACHE_DIR = "./weights-cache"
DEFAULT_MAX_BYTES = 20 * 10**9  # 20 GB, decimal like every size this package prints
# Real FLUX LoRAs are 20 MB to ~1.3 GB; full-rank "LoRAs" (extracted fine-tunes) reach ~5 GB.
DEFAULT_MAX_FILE_BYTES = 6 * 10**9
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds to open a connection
DEFAULT_READ_TIMEOUT = 30.0  # seconds a server may stay silent mid-request before the attempt is abandoned
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_CIVITAI_BASE_URL = "https://civitai.com"
DEFAULT_REPLICATE_BASE_URL = "https://replicate.com"

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
_UNITS |= {"t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class LoraSettings:
    cache_dir: Path = Path(DEFAULT_CACHE_DIR)
    max_bytes: int = DEFAULT_MAX_BYTES
    hf_token: str | None = field(default=None, repr=False)
    hf_endpoint: str = DEFAULT_HF_ENDPOINT
    civitai_token: str | None = field(default=None, repr=False)
    civitai_base_url: str = DEFAULT_CIVITAI_BASE_URL
    replicate_token: str | None = field(default=None, repr=False)
    replicate_base_url: str = DEFAULT_REPLICATE_BASE_URL
    allow_private_urls: bool = False
    # Folders local LoRA paths may be read from (resolved, symlinks followed); empty: local paths refused.
    local_dirs: tuple[Path, ...] = ()
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> LoraSettings:
        def text(name: str) -> str | None:
            return (environ.get(name) or "").strip() or None

        return cls(
            cache_dir=Path(text("LORA_CACHE_DIR") or DEFAULT_CACHE_DIR),
            max_bytes=parse_size(text("LORA_CACHE_MAX_BYTES"), "LORA_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES),
            hf_token=text("HF_TOKEN"),
            hf_endpoint=_base_url(text("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT),
            civitai_token=text("CIVITAI_API_TOKEN"),
            civitai_base_url=_base_url(text("CIVITAI_BASE_URL") or DEFAULT_CIVITAI_BASE_URL),
            replicate_token=text("REPLICATE_API_TOKEN"),
            replicate_base_url=_base_url(text("REPLICATE_BASE_URL") or DEFAULT_REPLICATE_BASE_URL),
            allow_private_urls=(text("LORA_ALLOW_PRIVATE_URLS") or "").lower() in ("1", "true", "yes", "on"),
            local_dirs=_folders(text("LORA_LOCAL_DIRS")),
            max_file_bytes=parse_size(text("LORA_MAX_FILE_BYTES"), "LORA_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES),
            connect_timeout=_seconds(text("LORA_CONNECT_TIMEOUT"), "LORA_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT),
            read_timeout=_seconds(text("LORA_READ_TIMEOUT"), "LORA_READ_TIMEOUT", DEFAULT_READ_TIMEOUT),
        )


def parse_size(value: str | None, name: str, default: int) -> int:
    """Bytes from `20000000000`, `20GB`, `500 MB` or `1.5GiB`; `default` when unset."""
    if value is None:
        return default
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise LoraError(f"{name}={value!r} is not a size; use a number of bytes such as 20000000000 or 20GB.")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise LoraError(f"{name}={value!r} must be more than 0 bytes.")
    return size


def _seconds(value: str | None, name: str, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = float(value.strip().removesuffix("s"))
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise LoraError(f"{name}={value!r} is not a timeout; use a number of seconds such as 30.")
    return seconds


def _folders(value: str | None) -> tuple[Path, ...]:
    """LORA_LOCAL_DIRS: folders separated by os.pathsep (`:` on Linux), resolved now so a later chdir or a
    swapped symlink cannot widen them."""
    if value is None:
        return ()
    return tuple(Path(part).expanduser().resolve() for part in value.split(os.pathsep) if part.strip())


def _base_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        url = f"https://{url}"
    return url.rstrip("/")
