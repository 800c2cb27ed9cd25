"""How many bytes a download may have, and sizes in words.

A `SizeLimit` carries its caller's advice (which setting raises it, what is usual), so the `TooLarge` it
raises is a whole sentence wherever it is checked: from Content-Length before the first byte is written,
on the bytes received, or by a caller on bytes that never came over HTTP (a data: URI, a tar member).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TooLarge


@dataclass(frozen=True)
class SizeLimit:
    """The most bytes a file may have, and the advice when one has more."""

    max_bytes: int
    advice: str  # completes "<what> is <size>, more than ...": "a LoRA file may be (…). Raise …"

    def check(self, what: str, size: int) -> None:
        if size > self.max_bytes:
            raise TooLarge(what, size, self.max_bytes, f"{what} is {format_size(size)}, more than {self.advice}")

    @classmethod
    def tightest(cls, *limits: SizeLimit) -> SizeLimit:
        return min(limits, key=lambda limit: limit.max_bytes)


def format_size(size: int) -> str:
    """Bytes in decimal units, as the Hugging Face Hub shows them: 512 B, 1.2 kB, 23.8 GB."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
