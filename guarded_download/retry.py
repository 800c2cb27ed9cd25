"""When to try again, how long to wait first, and what to say when there is no point any more.

Transport errors (a refused or dropped connection, a server that went silent past the read timeout), the
statuses in `RETRY_STATUSES` and bodies that end early are transient: tried again, after a bounded,
exponential backoff or the server's own Retry-After (never longer than `max_delay`). What no retry changes
(a redirect loop, an undecodable body) fails at once. When the tries run out the failure is one `GaveUp`
naming the last reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx2

from .errors import DownloadError, GaveUp, TooManyRedirects, UndecodableBody, UnusableAnswer
from .pace import Stopwatch

T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 10  # CivitAI and Replicate answer with one or two; more is a loop


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in a row that receive no new byte before giving up
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_total_attempts: int = 30  # a bound even when every try makes a little progress
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)  # tests record it

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        if retry_after is not None:  # the server said when; never longer than we would wait anyway
            return min(max(retry_after, 0.0), self.max_delay)
        return min(self.base_delay * 2 ** (failures - 1), self.max_delay)


class Transient(Exception):
    """A failure worth retrying that is not a transport error (a 5xx, a short body)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


RETRIED = (httpx2.TransportError, Transient)  # what the retry loops catch and try again
FINAL = (httpx2.TooManyRedirects, httpx2.DecodingError, httpx2.InvalidURL)  # what they turn into an error at once


def transient_status(response: httpx2.Response) -> Transient:
    return Transient(f"HTTP {response.status_code}", retry_after(response))


def retrying(attempt: Callable[[], T], what: str, retry: RetryPolicy, watch: Stopwatch | None = None) -> T:
    """`attempt()`, tried up to `retry.attempts` times while it fails transiently, and never past `watch`'s
    deadline (`PastDeadline`)."""
    for failures in range(1, retry.attempts + 1):
        try:
            return attempt()
        except FINAL as error:
            raise unusable(what, error) from None
        except RETRIED as error:
            if watch is not None:
                watch.check_deadline()
            if failures >= retry.attempts:
                raise gave_up(what, failures, error) from error
            delay = retry.delay(failures, getattr(error, "retry_after", None))
            retry.sleep(delay if watch is None else min(delay, max(watch.remaining(), 0.0)))
    raise AssertionError("unreachable")


def unusable(what: str, error: Exception) -> DownloadError:
    """Answers that no retry changes: a redirect loop, a body in an encoding it does not decode from, a URL
    httpx2 cannot send."""
    if isinstance(error, httpx2.TooManyRedirects):
        return TooManyRedirects(f"{what} redirects again and again (more than {MAX_REDIRECTS} times). Check the URL.")
    if isinstance(error, httpx2.InvalidURL):  # its message names the part, never the URL
        return UnusableAnswer(f"{what} cannot be requested: {error}. Check the URL.")
    return UndecodableBody(f"{what} answered with a body that could not be decoded ({error}). Check the URL.")


def gave_up(what: str, attempts: int, error: Exception) -> GaveUp:
    return GaveUp(what, attempts, reason(error), stalled=isinstance(error, httpx2.ReadTimeout))


def reason(error: Exception) -> str:
    """The failure in a few words: httpx2's messages never include the URL; the type says the rest."""
    text = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, Transient):  # our own words ("HTTP 503"), no type name needed
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def retry_after(response: httpx2.Response) -> float | None:
    """Retry-After in seconds (the delta form; an HTTP date is rare here and not worth trusting a clock)."""
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None
