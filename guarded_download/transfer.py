"""Streaming one URL into one file: capped, resumed when the connection drops, retried when the server fails.

The caller names the file (a temp file in the LoRA cache, an input image's temp file) and validates the
bytes once they are complete; nothing here hashes or interprets them. A `SizeLimit` is enforced twice: from
Content-Length before the first byte is written, and on the bytes actually received (a server may lie or
announce nothing). A dropped connection is resumed with `Range: bytes=N-` guarded by `If-Range` (a strong
ETag or Last-Modified) when the server advertised `Accept-Ranges: bytes`; a server that answers 200 to that,
or gave no validator, gets a clean restart. A body shorter than its Content-Length is a dropped connection.
Attempts that made progress retry at once; attempts that made none back off (`retry.RetryPolicy`) and count
against `RetryPolicy.attempts`. A server that stalls trips the read timeout, which fails the attempt like a
dropped connection. A server that keeps sending, but too slowly, is stopped by the `pace.Pace`: a minimum
rate over a window and a deadline for the whole download, retries included (a `TooSlow` error, not retried).
The URL is checked before anything is sent (`urls.check_url`). Progress goes to this module's logger: a
start line, a line per tenth (or every `PROGRESS_SECONDS`) for big files, and a done line with the rate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx2

from .errors import HTTPStatusError
from .limits import SizeLimit, format_size
from .pace import Pace, Stopwatch
from .retry import FINAL, RETRIED, RETRY_STATUSES, RetryPolicy, Transient, gave_up, reason, transient_status, unusable
from .urls import check_url

logger = logging.getLogger(__name__)

ERROR_BODY_BYTES = 64 * 1024  # enough for any error message; a huge error page is not read
PROGRESS_MIN_BYTES = 10 * 10**6  # smaller files get only the start and done lines
PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class DownloadResult:
    size: int
    seconds: float
    restarts: int  # connections that dropped and were resumed or restarted


def download(
    client: httpx2.Client,
    url: str,
    dest: Path,
    *,
    headers: Mapping[str, str],
    what: str,
    limit: SizeLimit,
    retry: RetryPolicy,
    pace: Pace | None = None,
) -> DownloadResult:
    """Stream `url` into `dest` (replaced), resuming or restarting dropped connections, within `pace` (the
    defaults of `Pace` when None). `what` names the file in messages and log lines ("LoRA
    https://host/x.safetensors?…", "an input image")."""
    check_url(url)
    watch = (pace or Pace()).start(what)
    state = _DownloadState(url, dict(headers), what, limit, watch)
    failures = total_attempts = 0
    with dest.open("wb") as out:
        while True:
            before = state.written
            total_attempts += 1
            try:
                watch.check_deadline()
                with watch.timing():  # the transport reports every read to it
                    state.attempt(client, out)
                break
            except FINAL as error:
                raise unusable(what, error) from None
            except RETRIED as error:
                watch.check_deadline()
                progressed = state.written > before
                failures = 0 if progressed else failures + 1
                if failures >= retry.attempts or total_attempts >= retry.max_total_attempts:
                    raise gave_up(what, total_attempts, error) from error
                state.restarts += 1
                logger.info("%s: attempt failed at %s (%s); retrying", what, format_size(state.written), reason(error))
                if not progressed:
                    delay = retry.delay(failures, getattr(error, "retry_after", None))
                    retry.sleep(min(delay, max(watch.remaining(), 0.0)))
    return state.finish()


class _DownloadState:
    """What one download knows between attempts: bytes on disk, the validator, the size."""

    def __init__(self, url: str, headers: dict[str, str], what: str, limit: SizeLimit, watch: Stopwatch) -> None:
        self.url, self.headers, self.what, self.limit, self.watch = url, headers, what, limit, watch
        self.written = 0
        self.total: int | None = None
        self.validator: str | None = None  # strong ETag or Last-Modified, for If-Range
        self.ranges = False
        self.restarts = 0
        self.started = time.monotonic()
        self.progress: _Progress | None = None

    def attempt(self, client: httpx2.Client, out: BinaryIO) -> None:
        self.watch.attempt_started()
        with client.stream("GET", self.url, headers=self._request_headers()) as response:
            self._accept(response, out)
            self.watch.expect(self.total)
            for chunk in response.iter_raw():  # as they arrive: a drop loses no received byte
                self._write(out, chunk)
        if self.total is not None and self.written != self.total:
            raise Transient(f"the body ended at {self.written} of {self.total} bytes")

    def _request_headers(self) -> dict[str, str]:
        if self.written and self.ranges and self.validator:
            return {**self.headers, "Range": f"bytes={self.written}-", "If-Range": self.validator}
        return self.headers

    def _accept(self, response: httpx2.Response, out: BinaryIO) -> None:
        status = response.status_code
        if status == 206 and self.written and _range_start(response) == self.written:
            return  # resumed: append
        if status == 200:
            self._start_over(out, response)
            return
        if status == 416 or status == 206:  # a range we did not ask for, or one the server will not serve
            self.validator = None
            raise Transient(f"HTTP {status} to a resume request")
        if status in RETRY_STATUSES:
            raise transient_status(response)
        raise HTTPStatusError(status, self.url, _read_prefix(response))

    def _start_over(self, out: BinaryIO, response: httpx2.Response) -> None:
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
        self.watch.advanced(self.written)
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


def _validator(response: httpx2.Response) -> str | None:
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
        return etag
    return response.headers.get("Last-Modified")


def _range_start(response: httpx2.Response) -> int | None:
    value = response.headers.get("Content-Range", "")
    if not value.startswith("bytes ") or "-" not in value:
        return None
    start = value[6:].split("-", 1)[0]
    return int(start) if start.isdigit() else None


def _read_prefix(response: httpx2.Response) -> bytes:
    body = b""
    for chunk in response.iter_raw():
        body += chunk
        if len(body) >= ERROR_BODY_BYTES:
            break
    return body[:ERROR_BODY_BYTES]
