"""`ServerConfig`: every setting of the server, read once from the environment into one frozen object.

The table below is the contract (DESIGN.md, "Configuration"): each field names its variable, the parser for
its kind (`values`) and its default, on one line, and nowhere else defines a default. `from_env` reads the
environment once, huggingface_hub style (its `constants` are read at import; ours at setup, because Cog sets
the environment before setup runs); whoever needs a setting is handed this object, so no module reads
`os.environ` on its own and a half-changed environment cannot give two parts of the server two answers.

    config = ServerConfig.from_env()                          # os.environ, now
    config = ServerConfig.from_env(environ, lora_cache_dir=p)  # a mapping, and typed overrides that win
    config = ServerConfig(device="cpu", allow_private_urls=True)   # code and tests: the rest at defaults

An unset or empty variable takes the default. Every variable is parsed before any error is raised, and
one `ConfigError` names each bad one. Tokens are kept out of `repr()` (configuration ends up in logs and
tracebacks) and out of error messages.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import values
from .errors import ConfigError, Problem

DEFAULT_WEIGHTS_DIR = Path("./model-cache")
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_CIVITAI_BASE_URL = "https://civitai.com"
DEFAULT_REPLICATE_BASE_URL = "https://replicate.com"
DEFAULT_LORA_CACHE_DIR = Path("./weights-cache")
DEFAULT_LORA_CACHE_MAX_BYTES = 20 * 10**9  # 20 GB, decimal like every size the server prints
# An entry used this recently may still be loading in this or another process sharing the cache: not evicted.
DEFAULT_LORA_CACHE_IN_USE_SECONDS = 60.0
# Real FLUX LoRAs are 20 MB to ~1.3 GB; full-rank "LoRAs" (extracted fine-tunes) reach ~5 GB.
DEFAULT_LORA_MAX_FILE_BYTES = 6 * 10**9
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds to open a connection
DEFAULT_READ_TIMEOUT = 30.0  # seconds a server may stay silent mid-download before the attempt is retried
# A download (LoRA, API answer or image URL) gets this long plus its size at the minimum rate, retries included.
DEFAULT_DOWNLOAD_DEADLINE = 600.0
# Bytes a second over the window: a sender slower than this (a drip) is cut off one window in. A 1.3 GB LoRA
# at this rate takes 3.6 hours, so it stops only servers that are not really serving.
DEFAULT_DOWNLOAD_MIN_RATE = 100_000
DEFAULT_DOWNLOAD_RATE_WINDOW = 30.0  # seconds: as long as the read timeout lets a server stay silent
# Inductor's and Triton's caches and the mega-cache file, so a restarted server skips recompiling.
DEFAULT_COMPILE_CACHE_DIR = Path("./compile-cache")
OUTPUTS_FOLDER = "flux-outputs-{pid}"  # under TMPDIR: one per server process, emptied per prediction


def _env(variable: str, parse: Callable[[str], Any], *, secret: bool = False) -> dict[str, Any]:
    """Field metadata: the variable a field is read from, its parser, and whether its value is secret."""
    return {"variable": variable, "parse": parse, "secret": secret}


@dataclass(frozen=True)
class ServerConfig:
    # Base weights and the models' precision.
    weights_dir: Path = field(default=DEFAULT_WEIGHTS_DIR, metadata=_env("WEIGHTS_DIR", values.path))
    device: str = field(default_factory=values.default_device, metadata=_env("FLUX_DEVICE", values.device))
    dtype: str | None = field(default=None, metadata=_env("FLUX_DTYPE", values.dtype))  # None: by device
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()), metadata=_env("TMPDIR", values.path))
    # Compilation and attention (generation/compile_settings.py, generation/attention.py).
    # auto: compiled on CUDA, eager elsewhere (compiling FLUX on a CPU takes minutes); on / off force it.
    compile: str = field(default="auto", metadata=_env("FLUX_COMPILE", values.compile_mode))
    compile_cache_dir: Path = field(
        default=DEFAULT_COMPILE_CACHE_DIR, metadata=_env("FLUX_COMPILE_CACHE_DIR", values.path)
    )
    # auto: the fastest backend measured at setup that matches the reference; else a diffusers backend name.
    attention_backend: str = field(default="auto", metadata=_env("FLUX_ATTENTION_BACKEND", values.attention_backend))
    # Sites and their tokens.
    hf_token: str | None = field(default=None, repr=False, metadata=_env("HF_TOKEN", values.text, secret=True))
    hf_endpoint: str = field(default=DEFAULT_HF_ENDPOINT, metadata=_env("HF_ENDPOINT", values.base_url))
    civitai_token: str | None = field(
        default=None, repr=False, metadata=_env("CIVITAI_API_TOKEN", values.text, secret=True)
    )
    civitai_base_url: str = field(default=DEFAULT_CIVITAI_BASE_URL, metadata=_env("CIVITAI_BASE_URL", values.base_url))
    replicate_token: str | None = field(
        default=None, repr=False, metadata=_env("REPLICATE_API_TOKEN", values.text, secret=True)
    )
    replicate_base_url: str = field(
        default=DEFAULT_REPLICATE_BASE_URL, metadata=_env("REPLICATE_BASE_URL", values.base_url)
    )
    # The LoRA cache.
    lora_cache_dir: Path = field(default=DEFAULT_LORA_CACHE_DIR, metadata=_env("LORA_CACHE_DIR", values.path))
    lora_cache_max_bytes: int = field(
        default=DEFAULT_LORA_CACHE_MAX_BYTES, metadata=_env("LORA_CACHE_MAX_BYTES", values.size)
    )
    lora_cache_in_use_seconds: float = field(
        default=DEFAULT_LORA_CACHE_IN_USE_SECONDS, metadata=_env("LORA_CACHE_IN_USE_SECONDS", values.seconds_or_zero)
    )
    # Limits on what a request may make the server read or download (LoRAs and image URLs).
    lora_max_file_bytes: int = field(
        default=DEFAULT_LORA_MAX_FILE_BYTES, metadata=_env("LORA_MAX_FILE_BYTES", values.size)
    )
    allow_private_urls: bool = field(default=False, metadata=_env("LORA_ALLOW_PRIVATE_URLS", values.flag))
    # Folders local LoRA paths may be read from (resolved, links followed); empty: local paths refused.
    lora_local_dirs: tuple[Path, ...] = field(default=(), metadata=_env("LORA_LOCAL_DIRS", values.folders))
    connect_timeout: float = field(
        default=DEFAULT_CONNECT_TIMEOUT, metadata=_env("LORA_CONNECT_TIMEOUT", values.seconds)
    )
    read_timeout: float = field(default=DEFAULT_READ_TIMEOUT, metadata=_env("LORA_READ_TIMEOUT", values.seconds))
    download_deadline: float = field(
        default=DEFAULT_DOWNLOAD_DEADLINE, metadata=_env("DOWNLOAD_DEADLINE_SECONDS", values.seconds)
    )
    download_min_rate: int = field(
        default=DEFAULT_DOWNLOAD_MIN_RATE, metadata=_env("DOWNLOAD_MIN_BYTES_PER_SECOND", values.rate)
    )
    download_rate_window: float = field(
        default=DEFAULT_DOWNLOAD_RATE_WINDOW, metadata=_env("DOWNLOAD_RATE_WINDOW_SECONDS", values.seconds)
    )

    def __post_init__(self) -> None:
        # Fixed now, whatever the working folder is later: relative paths mean the server's folder at setup,
        # and local LoRA folders are resolved so a later chdir or a swapped link cannot widen them.
        fix = {name: Path(getattr(self, name)).expanduser().absolute() for name in _FOLDERS}
        fix["lora_local_dirs"] = tuple(Path(p).expanduser().resolve() for p in self.lora_local_dirs)
        fix["dtype"] = _dtype(self.dtype, self.device)
        for name in ("hf_endpoint", "civitai_base_url", "replicate_base_url"):
            fix[name] = getattr(self, name).rstrip("/")
        for name, value in fix.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """The configuration `environ` (default: os.environ) describes; `overrides` are typed field values
        that replace what a variable says (and are not parsed from it)."""
        environ = os.environ if environ is None else environ
        parsed: dict[str, Any] = {}
        problems = []
        for spec in fields(cls):
            variable = spec.metadata["variable"]
            text = (environ.get(variable) or "").strip()
            if spec.name in overrides or not text:
                continue
            try:
                parsed[spec.name] = spec.metadata["parse"](text)
            except ValueError as error:
                problems.append(Problem(variable, None if spec.metadata["secret"] else text, str(error)))
        if problems:
            raise ConfigError(problems)
        return cls(**parsed, **overrides)

    @property
    def output_dir(self) -> Path:
        """Where this process writes each prediction's files (emptied when the next prediction starts)."""
        return self.temp_dir / OUTPUTS_FOLDER.format(pid=os.getpid())

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Environment variable -> field name, in the table's order (for documentation and tests)."""
        return {spec.metadata["variable"]: spec.name for spec in fields(cls)}


_FOLDERS = ("weights_dir", "temp_dir", "lora_cache_dir", "compile_cache_dir")


def _dtype(name: str | None, device: str) -> str:
    if not name:
        return values.default_dtype(device)
    try:
        return values.dtype(name)
    except ValueError as error:  # a dtype given in code, not read from FLUX_DTYPE: still named by its variable
        raise ConfigError([Problem("FLUX_DTYPE", name, str(error))]) from None
