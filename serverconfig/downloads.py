"""The download settings as the guarded downloader's options, and the operator advice that goes with them.

LoRA and image downloads share `LORA_ALLOW_PRIVATE_URLS`, `LORA_CONNECT_TIMEOUT`, `LORA_READ_TIMEOUT` and the
`DOWNLOAD_*` deadline and minimum rate; this is the one place that turns them into an `AddressPolicy`,
`Timeouts` and a `Pace`, and the one place that knows which of them an operator changes when a download fails
because of it.
"""

from __future__ import annotations

from guarded_download import (
    AddressPolicy,
    AddressRefused,
    BelowMinimumRate,
    DownloadError,
    GaveUp,
    Pace,
    PastDeadline,
    Timeouts,
)

from .config import ServerConfig


def address_policy(config: ServerConfig, subject: str) -> AddressPolicy:
    """The policy for downloads of `subject` ("a LoRA", "an input image")."""
    return AddressPolicy(allow_private=config.allow_private_urls, subject=subject)


def timeouts(config: ServerConfig) -> Timeouts:
    return Timeouts(connect=config.connect_timeout, read=config.read_timeout)


def pace(config: ServerConfig) -> Pace:
    """The deadline and minimum rate every download is held to."""
    return Pace(
        deadline=config.download_deadline, min_rate=config.download_min_rate, window=config.download_rate_window
    )


def with_advice(error: DownloadError) -> str:
    """`error`'s message, with the setting an operator can change when one would help."""
    if isinstance(error, AddressRefused):
        return f"{error} An operator can set LORA_ALLOW_PRIVATE_URLS=1 for a local mirror."
    if isinstance(error, GaveUp) and error.stalled:
        return f"{error} An operator can raise LORA_READ_TIMEOUT for slow sites."
    if isinstance(error, BelowMinimumRate):
        return f"{error} An operator can lower DOWNLOAD_MIN_BYTES_PER_SECOND for slow sites."
    if isinstance(error, PastDeadline):
        return f"{error} An operator can raise DOWNLOAD_DEADLINE_SECONDS for slow sites."
    return str(error)
