"""HTTP for LoRA downloads: one httpx client whose every request passes the address policy, streaming
downloads that resume or retry, JSON API calls, and status errors the fetcher turns into advice.

Downloads stream into a file the caller names (a temp file in the cache) and hash nothing: the caller
validates and hashes once the bytes are complete. A `SizeLimit` is enforced twice: from Content-Length
before the first byte is written, and on the bytes actually received (a server may lie or announce
nothing). Dropped connections are resumed with `Range: bytes=N-` guarded by `If-Range` (a strong ETag or
Last-Modified) when the server advertised `Accept-Ranges: bytes`; a server that answers 200 to that, or
gave no validator, gets a clean restart. A body shorter than its Content-Length is a dropped connection.
Attempts that made progress retry at once; attempts that made none back off (bounded, exponential, or the
server's Retry-After up to `max_delay`) and count against `RetryPolicy.attempts`. A server that stalls
trips the read timeout (`Timeouts`), which fails the attempt like a dropped connection. Bodies are never
content-decoded (`Accept-Encoding: identity`), so byte offsets are file offsets.

Redirects are followed by httpx, which also drops `Authorization` when a redirect leaves the origin
(CivitAI's 307 to a signed storage URL must not carry the CivitAI token). Every connection, the first
URL's and each redirect's, is made by `transport.GuardedTransport`, which dials only addresses the
address policy resolved and allowed (no DNS rebinding); environment proxies are not used.

Nothing here logs a query string: signed URLs carry credentials there. httpx's own INFO request lines
would, as would huggingface_hub's retry warnings, so a filter on those loggers strips queries.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx

from .errors import LoraError
from .netpolicy import AddressPolicy
from .sources import redact_url
from .transport import GuardedTransport

logger = logging.getLogger(__name__)

USER_AGENT = "flux-lora-server/0.1 (lora_loader)"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ERROR_BODY_BYTES = 64 * 1024  # enough for any error message; a huge error page is not read
PROGRESS_MIN_BYTES = 10 * 10**6  # smaller files get only the start and done lines
PROGRESS_SECONDS = 5.0
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


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0  # to open a connection (each address tried)
    read: float = 30.0  # the longest a server may stay silent: before the headers or between two chunks

    def httpx(self) -> httpx.Timeout:
        return httpx.Timeout(self.read, connect=self.connect)


@dataclass(frozen=True)
class SizeLimit:
    """The most bytes a file may have, and the advice when one has more (which setting raises it)."""

    max_bytes: int
    advice: str  # completes "<what> is <size>, more than ..."

    def check(self, what: str, size: int) -> None:
        if size > self.max_bytes:
            raise LoraError(f"{what} is {format_size(size)}, more than {self.advice}")

    @classmethod
    def tightest(cls, *limits: SizeLimit) -> SizeLimit:
        return min(limits, key=lambda limit: limit.max_bytes)


def cache_limit(max_bytes: int) -> SizeLimit:
    return SizeLimit(
        max_bytes,
        f"the whole LoRA cache may hold (LORA_CACHE_MAX_BYTES={max_bytes}, {format_size(max_bytes)}). "
        "Raise LORA_CACHE_MAX_BYTES to use it.",
    )


def file_limit(max_bytes: int) -> SizeLimit:
    return SizeLimit(
        max_bytes,
        f"a LoRA file may be (LORA_MAX_FILE_BYTES={max_bytes}, {format_size(max_bytes)}). FLUX LoRAs are "
        "usually 20 MB to 1.3 GB; an operator can raise LORA_MAX_FILE_BYTES.",
    )


class HttpStatusError(Exception):
    """A final (non-retryable or retried-out) HTTP error status; the fetcher words it for the user."""

    def __init__(self, status: int, url: str, detail: str = "") -> None:
        self.status, self.url, self.detail = status, redact_url(url), detail
        super().__init__(f"HTTP {status} from {self.url}" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class DownloadResult:
    size: int
    seconds: float
    restarts: int  # connections that dropped and were resumed or restarted


def make_client(
    policy: AddressPolicy, timeouts: Timeouts | None = None, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """The one way downloads get a client: pinned, policy-checked connections, bounded redirects and time.

    `trust_env=False`: an HTTP(S)_PROXY from the environment would be mounted in front of `transport`
    and resolve names itself, out of the address policy's reach.
    """
    return httpx.Client(
        transport=transport or GuardedTransport(policy),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=(timeouts or Timeouts()).httpx(),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        trust_env=False,
    )


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def get_json(client: httpx.Client, url: str, headers: Mapping[str, str], retry: RetryPolicy) -> object:
    """GET `url` as JSON; HttpStatusError on an error status, retrying transient failures."""

    def attempt() -> object:
        response = client.get(url, headers=dict(headers))
        if response.status_code in RETRY_STATUSES:
            raise _Transient(f"HTTP {response.status_code}", _retry_after(response))
        if response.status_code >= 400:
            raise HttpStatusError(response.status_code, url, _error_detail(response.content))
        try:
            return response.json()
        except ValueError:
            raise LoraError(f"{redact_url(url)} did not answer with JSON. Check the site's base URL.") from None

    return _retrying(attempt, url, retry)


def download(
    client: httpx.Client,
    url: str,
    dest: Path,
    *,
    headers: Mapping[str, str],
    what: str,
    limit: SizeLimit,
    retry: RetryPolicy,
) -> DownloadResult:
    """Stream `url` into `dest` (replaced), resuming or restarting dropped connections."""
    state = _DownloadState(url, dict(headers), what, limit)
    failures = total_attempts = 0
    with dest.open("wb") as out:
        while True:
            before = state.written
            total_attempts += 1
            try:
                state.attempt(client, out)
                break
            except (httpx.TooManyRedirects, httpx.DecodingError) as error:
                raise _unusable_answer(what, error) from None
            except (httpx.TransportError, _Transient) as error:
                progressed = state.written > before
                failures = 0 if progressed else failures + 1
                if failures >= retry.attempts or total_attempts >= retry.max_total_attempts:
                    raise _gave_up(what, total_attempts, error) from error
                state.restarts += 1
                logger.info("%s: attempt failed at %s (%s); retrying", what, format_size(state.written), _reason(error))
                if not progressed:
                    retry.sleep(retry.delay(failures, getattr(error, "retry_after", None)))
    return state.finish()


class _Transient(Exception):
    """A failure worth retrying that is not a transport error (a 5xx, a short body)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _DownloadState:
    """What one download knows between attempts: bytes on disk, the validator, the size."""

    def __init__(self, url: str, headers: dict[str, str], what: str, limit: SizeLimit) -> None:
        self.url, self.headers, self.what, self.limit = url, headers, what, limit
        self.written = 0
        self.total: int | None = None
        self.validator: str | None = None  # strong ETag or Last-Modified, for If-Range
        self.ranges = False
        self.restarts = 0
        self.started = time.monotonic()
        self.progress: _Progress | None = None

    def attempt(self, client: httpx.Client, out: BinaryIO) -> None:
        with client.stream("GET", self.url, headers=self._request_headers()) as response:
            self._accept(response, out)
            for chunk in response.iter_raw():  # as they arrive: a drop loses no received byte
                self._write(out, chunk)
        if self.total is not None and self.written != self.total:
            raise _Transient(f"the body ended at {self.written} of {self.total} bytes")

    def _request_headers(self) -> dict[str, str]:
        if self.written and self.ranges and self.validator:
            return {**self.headers, "Range": f"bytes={self.written}-", "If-Range": self.validator}
        return self.headers

    def _accept(self, response: httpx.Response, out: BinaryIO) -> None:
        status = response.status_code
        if status == 206 and self.written and _range_start(response) == self.written:
            return  # resumed: append
        if status == 200:
            self._start_over(out, response)
            return
        if status == 416 or status == 206:  # a range we did not ask for, or one the server will not serve
            self.validator = None
            raise _Transient(f"HTTP {status} to a resume request")
        if status in RETRY_STATUSES:
            raise _Transient(f"HTTP {status}", _retry_after(response))
        raise HttpStatusError(status, self.url, _error_detail(_read_prefix(response)))

    def _start_over(self, out: BinaryIO, response: httpx.Response) -> None:
        if self.written:
            logger.info("%s: the server cannot resume; downloading again from the start", self.what)
        out.seek(0)
        out.truncate()
        self.written = 0
        length = response.headers.get("Content-Length")
        self.total = int(length) if length and length.isdigit() else None
        self.ranges = response.headers.get("Accept-Ranges", "").lower() == "bytes"
        self.validator = _validator(response)
        if self.total is not None:
            self.limit.check(self.what, self.total)  # before the first byte is written
        if self.progress is None:
            logger.info("%s: downloading %s", self.what, format_size(self.total) if self.total else "(size unknown)")
            self.progress = _Progress(self.what, self.total)

    def _write(self, out: BinaryIO, chunk: bytes) -> None:
        if self.written + len(chunk) > self.limit.max_bytes:  # a server that announced less, or nothing
            self.limit.check(self.what, self.written + len(chunk))
        out.write(chunk)
        self.written += len(chunk)
        if self.progress is not None:
            self.progress.update(self.written)

    def finish(self) -> DownloadResult:
        seconds = time.monotonic() - self.started
        rate = self.written / 1e6 / seconds if seconds > 0 else 0.0
        logger.info("%s: downloaded %s in %.1fs (%.1f MB/s)", self.what, format_size(self.written), seconds, rate)
        return DownloadResult(self.written, seconds, self.restarts)


class _Progress:
    """A line every ~10% or PROGRESS_SECONDS, for files big enough to be worth it."""

    def __init__(self, what: str, total: int | None) -> None:
        self.what, self.total = what, total
        self.enabled = total is None or total >= PROGRESS_MIN_BYTES
        self.last_time = time.monotonic()
        self.last_tenth = 0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        tenth = done * 10 // self.total if self.total else 0
        if tenth > self.last_tenth or now - self.last_time >= PROGRESS_SECONDS:
            self.last_tenth, self.last_time = max(tenth, self.last_tenth), now
            share = f" ({done * 100 // self.total}%)" if self.total else ""
            logger.info("%s: %s%s", self.what, format_size(done), share)


def _retrying(fn: Callable[[], object], url: str, retry: RetryPolicy) -> object:
    for failures in range(1, retry.attempts + 1):
        try:
            return fn()
        except (httpx.TooManyRedirects, httpx.DecodingError) as error:
            raise _unusable_answer(redact_url(url), error) from None
        except (httpx.TransportError, _Transient) as error:
            if failures >= retry.attempts:
                raise _gave_up(redact_url(url), failures, error) from error
            retry.sleep(retry.delay(failures, getattr(error, "retry_after", None)))
    raise AssertionError("unreachable")


def _unusable_answer(what: str, error: httpx.TooManyRedirects | httpx.DecodingError) -> LoraError:
    """Answers that no retry changes: a redirect loop, or a body in an encoding it does not decode from."""
    if isinstance(error, httpx.TooManyRedirects):
        return LoraError(f"{what} redirects again and again (more than {MAX_REDIRECTS} times). Check the URL.")
    return LoraError(f"{what} answered with a body that could not be decoded ({error}). Check the URL.")


def _gave_up(what: str, attempts: int, error: Exception) -> LoraError:
    stalled = (
        " The server stopped sending data (an operator can raise LORA_READ_TIMEOUT for slow sites)."
        if isinstance(error, httpx.ReadTimeout)
        else ""
    )
    return LoraError(
        f"Could not download {what}: {attempts} attempts failed (last: {_reason(error)}).{stalled} "
        "The site may be down or unreachable from here; try again later."
    )


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the delta form; an HTTP date is rare here and not worth trusting a clock)."""
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def _reason(error: Exception) -> str:
    # httpx messages never include the URL, but keep the type: "ReadError" says more than an empty string.
    text = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, _Transient):  # our own words ("HTTP 503"), no type name needed
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _validator(response: httpx.Response) -> str | None:
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
        return etag
    return response.headers.get("Last-Modified")


def _range_start(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Range", "")
    if not value.startswith("bytes ") or "-" not in value:
        return None
    start = value[6:].split("-", 1)[0]
    return int(start) if start.isdigit() else None


def _read_prefix(response: httpx.Response) -> bytes:
    body = b""
    for chunk in response.iter_raw():
        body += chunk
        if len(body) >= ERROR_BODY_BYTES:
            break
    return body[:ERROR_BODY_BYTES]


def _error_detail(content: bytes) -> str:
    """A short reason from an error body ({"error": ...} or {"message": ...}); empty otherwise."""
    try:
        body = json.loads(content)
    except ValueError:
        return ""
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if isinstance(body.get(key), str):
                return body[key][:200]
    return ""


def format_size(size: int) -> str:
    """Bytes in decimal units: 512 B, 1.2 MB, 23.8 GB."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


class _RedactQueries(logging.Filter):
    """Strip query strings from URLs in library log lines; signed URLs carry credentials there."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _URL_QUERY.sub(r"\1?…", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*")
# Logger filters do not apply to child loggers, so each logger that prints URLs is named.
_URL_LOGGERS = (
    "httpx",
    "httpx2",
    "huggingface_hub.file_download",
    "huggingface_hub.utils._http",
    *(f"{core}.{part}" for core in ("httpcore", "httpcore2") for part in ("connection", "http11", "http2", "proxy")),
)


def _install_log_redaction() -> None:
    for name in _URL_LOGGERS:
        library_logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactQueries) for f in library_logger.filters):
            library_logger.addFilter(_RedactQueries())


_install_log_redaction()
