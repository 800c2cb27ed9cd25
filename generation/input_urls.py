"""Image inputs (`image`, `mask`) given as URLs: the same address policy, size cap, timeouts, deadline and
minimum rate as LoRAs, and a download that a cancelled prediction stops.

Cog downloads a URL given for a `cog.Path` input before predict() runs. In cog 0.23.1 the coglet worker
calls `cog.types.Path.validate(value)` for every http(s)/data: string of a Path-typed input; for http(s)
that returns a `URLPath` whose `fileobj` is a `cog.types.URLFile`, which `requests.get`s the URL (any
host, loopback and cloud metadata included, redirects followed anywhere, no size cap), and coglet then
calls `URLPath.convert()`, which copies that stream into a temp file (removed after the prediction).
Cog has no hook or setting for this download, so `install(cog.types)` wraps `Path.validate`, the one
function coglet looks up by name (on every prediction) to coerce those inputs:

- http(s): the URL is downloaded right there, inside `validate`, through `guarded_download`, as LoRAs are:
  connections only to addresses the policy resolved and allowed, every redirect checked again, connect and
  read timeouts, the deadline and minimum rate (`DOWNLOAD_*`), resume and bounded retries, at most
  `images.MAX_INPUT_BYTES` (from Content-Length and while streaming). It returns a URLPath (a subclass of
  cog's) whose `fileobj` is that finished `GuardedDownload`; coglet's convert() then only copies it into
  its temp file. Cog's convert creates that file first and leaves it behind when the copy fails, so
  downloading first also means a failed download leaves no file.
- data: URIs whose base64 is longer than that cap allows are refused before cog decodes them.
- anything else goes to cog's own validate.

Why inside `validate`: coglet cancels a prediction whose inputs are still being prepared
(POST /predictions/<id>/cancel) by raising `coglet.CancelationException` in the thread preparing them
(PyThreadState_SetAsyncExc), which is the thread that calls `validate`, for a synchronous and an async run()
alike; convert() runs in coglet's download threads, which nothing cancels, while the preparing thread waits
for them in native code where no exception can reach it. So a download there held its slot until the sender
stopped; here the exception arrives at the next read of the connection, the download stops, its temp file
goes, and coglet reports the prediction canceled. The cost: an image and a mask download one after the other
instead of side by side.

A refusal raises a `UserInputError` (a ValueError); coglet fails that prediction with "Input validation
error: <our message>" and the worker stays ready for the next one. The policy, timeouts and pace come from
the `ServerConfig` that predict.py's setup hands to `install` (LORA_ALLOW_PRIVATE_URLS=1 lets image URLs
reach private addresses too: tests, local mirrors). This module never imports cog (docs/DESIGN.md,
"Architecture": only predict.py does); predict.py hands it `cog.types`.

Strings that are not URLs never reach `validate`: coglet passes them to predict() as plain `str`, which
would make the server open its own files ("/etc/passwd", another request's outputs). `require_file`
refuses those. Coglet's own test for a URL is case-sensitive (`http://`, `https://`, `data:`), while URL
schemes are not (RFC 3986), so `HTTP://host/photo.png` also arrives as a string: `require_file` downloads
those itself, under the same guard, into a temp file that is removed when the request holding it is
dropped. cog's downloads and script/predict's local files arrive as path objects.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import tempfile
import weakref
from pathlib import Path, PosixPath
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

from guarded_download import (
    AddressPolicy,
    DownloadError,
    HTTPStatusError,
    MalformedURL,
    Pace,
    RetryPolicy,
    SizeLimit,
    Timeouts,
    download,
    format_size,
    make_client,
    redact_url,
)
from serverconfig import ServerConfig
from serverconfig.downloads import address_policy, pace, timeouts, with_advice

from .errors import UserInputError
from .images import MAX_INPUT_BYTES

logger = logging.getLogger(__name__)

SUBJECT = "an input image"
_DATA_URI_SLACK = 4096  # the "data:image/png;base64," header and line breaks
# The guard of the last install(): validate() and require_file() download under it.
_installed: list[_Guard] = []


class GuardedDownload(io.RawIOBase):
    """A read-only file of `url`'s body, downloaded (by `fetch`, or the first read) under the policy, the cap
    and the pace (`Pace`'s defaults when None)."""

    def __init__(
        self,
        url: str,
        policy: AddressPolicy,
        timeouts: Timeouts,
        limit: SizeLimit,
        retry: RetryPolicy | None = None,
        pace: Pace | None = None,
    ) -> None:
        super().__init__()
        self.url, self.policy, self.timeouts, self.limit = url, policy, timeouts, limit
        self.retry = retry or RetryPolicy()
        self.pace = pace or Pace()
        self._file: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def fetch(self) -> None:
        """Download now (the first read would otherwise); UserInputError when the URL cannot be had."""
        if self._file is None:
            self._file = self._download()

    def readinto(self, buffer) -> int:
        self.fetch()
        return self._file.readinto(buffer)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()

    def download_to(self, path: Path) -> None:
        """Download into `path` (replaced); UserInputError when the URL cannot be had."""
        try:
            with make_client(self.policy, self.timeouts) as client:
                download(
                    client, self.url, path, headers={}, what=SUBJECT, limit=self.limit, retry=self.retry, pace=self.pace
                )
        except HTTPStatusError as error:
            raise UserInputError(
                f"The input image URL {error.url} answered HTTP {error.status}. Check that the URL is public and "
                "still valid (signed URLs expire)."
            ) from None
        except MalformedURL as error:
            raise UserInputError(f"The input image URL {error.url} is not valid: {error.why}. Check it.") from None
        except DownloadError as error:
            raise UserInputError(with_advice(error)) from error

    def _download(self) -> io.BufferedReader:
        # Downloaded into a named temp file (download() resumes by path), opened, then unlinked at once:
        # the open handle keeps the bytes, and nothing is left behind whatever happens next (a cancel too).
        path = _temp_file()
        try:
            self.download_to(path)
            return path.open("rb")
        finally:
            path.unlink(missing_ok=True)


def install(cog_types: ModuleType, config: ServerConfig) -> None:
    """Wrap `cog_types.Path.validate` so URL inputs download under `config`'s policy and timeouts. Installing
    again (another setup in the same process) only replaces the configuration: it never wraps twice."""
    path_type = cog_types.Path
    _installed[:] = [_Guard.from_config(config)]
    if getattr(path_type.validate, "_guarded", False):
        return
    original = path_type.validate
    url_path_type = _downloading_first(cog_types.URLPath)

    def validate(cls: type, value: Any) -> Any:
        if isinstance(value, str):
            scheme = _scheme(value)
            if scheme in ("http", "https"):
                fileobj = _installed[0].open(value)
                fileobj.fetch()  # now, in the prediction's thread, where a cancel reaches it (module docstring)
                return url_path_type(source=value, filename=cog_types.get_filename(value), fileobj=fileobj)
            if scheme == "data":
                _check_data_uri_size(value)
        return original(value)

    validate._guarded = True  # type: ignore[attr-defined]
    path_type.validate = classmethod(validate)


def _scheme(value: str) -> str:
    try:
        return urlsplit(value).scheme.lower()
    except ValueError:  # an unclosed IPv6 bracket: not a URL anything here fetches
        return ""


def _check_data_uri_size(value: str) -> None:
    if len(value) > MAX_INPUT_BYTES * 4 // 3 + _DATA_URI_SLACK:
        raise UserInputError(
            f"The data: URI of an input image is {format_size(len(value))} of base64, more than an input image may "
            f"be ({format_size(MAX_INPUT_BYTES)}). Send a smaller image."
        )


def _downloading_first(url_path_type: type) -> type:
    class GuardedURLPath(url_path_type):
        """cog's URLPath, whose convert() downloads before creating its temp file."""

        def convert(self):
            if getattr(self, "_path", None) is None and isinstance(self.fileobj, GuardedDownload):
                self.fileobj.fetch()
                try:
                    return super().convert()
                finally:
                    # cog copies the body and never closes the source; the unlinked download behind it would
                    # hold its disk space (up to the cap) until garbage collection.
                    self.fileobj.close()
            return super().convert()

    return GuardedURLPath


class _Guard:
    """What every image download shares: the policy, the timeouts, the pace and the cap."""

    def __init__(self, policy: AddressPolicy, timeouts: Timeouts, pace: Pace) -> None:
        self.policy, self.timeouts, self.pace = policy, timeouts, pace
        self.limit = SizeLimit(
            MAX_INPUT_BYTES, f"an input image may be ({format_size(MAX_INPUT_BYTES)}). Send a smaller image."
        )

    @classmethod
    def from_config(cls, config: ServerConfig) -> _Guard:
        policy = address_policy(config, SUBJECT)
        logger.debug("Image URL inputs download through the address policy (private allowed: %s)", policy.allow_private)
        return cls(policy, timeouts(config), pace(config))

    def open(self, url: str) -> GuardedDownload:
        return GuardedDownload(url, self.policy, self.timeouts, self.limit, pace=self.pace)


def require_file(value: str | os.PathLike | None, name: str) -> str | os.PathLike | None:
    """`value` unless it is a plain string: a path the client typed, which must not open server files. A URL
    coglet passed on as a string (a scheme in capitals: `HTTP://`, `Data:`) is fetched here instead."""
    if value is None or isinstance(value, os.PathLike):
        return value
    scheme = _scheme(value)
    if scheme in ("http", "https", "data") and _installed:
        return _fetch_late(scheme + value[len(scheme) :], name)
    shown = redact_url(value) if "://" in value else value
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise UserInputError(
        f"The {name} must be an http(s) URL or a data: URI, not {shown!r}: the server does not read its own files."
    )


class DownloadedInput(PosixPath):
    """An input `require_file` downloaded: its temp file is removed when the path object is dropped (with the
    request that holds it), as coglet removes its own downloads after a prediction."""


def _fetch_late(url: str, name: str) -> DownloadedInput:
    path = _temp_file()
    try:
        if url.startswith("data:"):
            path.write_bytes(_decode_data_uri(url, name))
        else:
            _installed[0].open(url).download_to(path)
    except BaseException:  # a cancel too: nothing is left behind
        path.unlink(missing_ok=True)
        raise
    downloaded = DownloadedInput(path)
    weakref.finalize(downloaded, path.unlink, missing_ok=True)
    return downloaded


def _decode_data_uri(uri: str, name: str) -> bytes:
    _check_data_uri_size(uri)
    header, _, data = uri[len("data:") :].partition(",")
    try:
        if header.lower().endswith(";base64"):
            return base64.b64decode("".join(data.split()), validate=True)
        return unquote(data).encode("latin-1")
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise UserInputError(f"The {name} is a data: URI that could not be decoded. Send base64 data.") from None


def _temp_file() -> Path:
    fd, name = tempfile.mkstemp(prefix="input-image-")
    os.close(fd)
    return Path(name)
