"""Parsers from an environment variable's text to a typed value, one per kind of variable.

Each takes the stripped, non-empty text and returns the value, or raises ValueError whose message completes
"VARIABLE='text' ..." ("is not a size; use a number of bytes such as 20GB."); `config` adds the name.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

# Decimal units as every size this server prints; binary ones for those who think in GiB.
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
_UNITS |= {"t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$", re.IGNORECASE)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# torch's names and the short ones people type; the canonical name is what the configuration keeps.
DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}
DTYPES |= {"float32": "float32", "fp32": "float32"}


def text(value: str) -> str:
    """A token or a name: taken as it is (already stripped)."""
    return value


def path(value: str) -> Path:
    """A folder or file; `~` is expanded now, relative paths stay relative to the working folder."""
    if "\0" in value:
        raise ValueError("is not a path (it holds a NUL character).")
    try:
        return Path(value).expanduser()
    except RuntimeError as error:  # ~user for a user that does not exist
        raise ValueError(f"is not a path ({error}).") from None


def folders(value: str) -> tuple[Path, ...]:
    """Folders separated by os.pathsep (`:` on Linux); empty parts are skipped."""
    return tuple(path(part.strip()) for part in value.split(os.pathsep) if part.strip())


def size(value: str) -> int:
    """Bytes from `20000000000`, `20GB`, `500 MB` or `1.5GiB`; more than 0."""
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError("is not a size; use a number of bytes such as 20000000000 or 20GB.")
    count = int(float(match.group(1)) * _UNITS[unit])
    if count <= 0:
        raise ValueError("must be more than 0 bytes.")
    return count


def rate(value: str) -> int:
    """Bytes a second, written as a size (`100kB`, `1MB`, `50000`); more than 0."""
    try:
        return size(value)
    except ValueError:
        raise ValueError("is not a rate; use bytes per second, more than 0, such as 100kB.") from None


def seconds(value: str) -> float:
    """A duration in seconds (`30`, `2.5`, `45s`), more than 0: a timeout."""
    duration = _seconds(value)
    if duration <= 0:
        raise ValueError("is not a timeout; use a number of seconds more than 0, such as 30.")
    return duration


def seconds_or_zero(value: str) -> float:
    """A duration in seconds that may be 0 (`0` turns the window it sets off)."""
    return _seconds(value)


def _seconds(value: str) -> float:
    try:
        duration = float(value.removesuffix("s").strip())
    except ValueError:
        duration = math.nan
    if not math.isfinite(duration) or duration < 0:
        raise ValueError("is not a number of seconds; use one such as 30.")
    return duration


def flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"is neither on nor off; use {' / '.join(_TRUE)} or {' / '.join(_FALSE)}.")


def base_url(value: str) -> str:
    """An http(s) site without a trailing slash; `host.tld` alone means https://host.tld."""
    url = value if "://" in value else f"https://{value}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("is not an http(s) URL.")
    if not parts.hostname or any(c.isspace() for c in url) or parts.query or parts.fragment:
        raise ValueError("is not a site's base URL; use one such as https://example.com.")
    return url.rstrip("/")


def device(value: str) -> str:
    """A torch device (`cpu`, `cuda`, `cuda:1`), in torch's spelling."""
    import torch  # here, not at import: reading the configuration should not cost a torch import

    try:
        return str(torch.device(value))
    except (RuntimeError, ValueError):
        raise ValueError("is not a torch device; use cpu, cuda or cuda:<index>.") from None


def dtype(value: str) -> str:
    """A floating-point dtype, by its canonical torch name."""
    canonical = DTYPES.get(value.lower())
    if canonical is None:
        raise ValueError("is not supported; use bfloat16, float16 or float32 (or bf16, fp16, fp32).")
    return canonical


def compile_mode(value: str) -> str:
    """auto, on or off (the words `flag` takes count as on / off): whether the transformers are compiled."""
    lowered = value.lower()
    if lowered == "auto":
        return "auto"
    try:
        return "on" if flag(lowered) else "off"
    except ValueError:
        raise ValueError("is not a compile mode; use auto, on or off.") from None


def attention_backend(value: str) -> str:
    """auto (measure at setup) or the name of one of diffusers' attention backends, as diffusers spells it."""
    lowered = value.lower()
    if lowered == "auto":
        return "auto"
    from diffusers.models.attention_dispatch import AttentionBackendName  # here: diffusers imports torch

    names = [backend.value for backend in AttentionBackendName]
    if lowered not in names:
        raise ValueError(f"is not an attention backend; use auto or one of {', '.join(names)}.")
    return lowered


def default_device() -> str:
    """cuda when a GPU is visible, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device_name: str) -> str:
    """bfloat16 on a GPU (FLUX.1's own precision), float32 elsewhere (CPUs are slow or inexact in bf16)."""
    return "bfloat16" if device_name.startswith("cuda") else "float32"
