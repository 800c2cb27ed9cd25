"""Image inputs (`image`, `mask`) given as URLs: the same address policy, size cap and timeouts as LoRAs.

Cog downloads a URL given for a `cog.Path` input before predict() runs. In cog 0.23.1 the coglet worker
calls `cog.types.Path.validate(value)` for every http(s)/data: string of a Path-typed input; for http(s)
that returns a `URLPath` whose `fileobj` is a `cog.types.URLFile`, which `requests.get`s the URL (any
host, loopback and cloud metadata included, redirects followed anywhere, no size cap), and coglet then
calls `URLPath.convert()`, which copies that stream into a temp file (removed after the prediction).
Cog has no hook or setting for this download, so `install(cog.types)` wraps `Path.validate`, the one
function coglet looks up by name (on every prediction) to coerce those inputs:

- http(s): a URLPath (a subclass of cog's) whose `fileobj` is a `GuardedDownload`. When coglet converts
  it (in its download threads, so inputs still download in parallel) the URL is fetched through
  `guarded_download`, as LoRAs are: connections only to addresses the policy resolved and allowed, every
  redirect checked again, connect and read timeouts, resume and bounded retries, at most
  `images.MAX_INPUT_BYTES` (from Content-Length and while streaming). Only then does cog's own convert
  create its temp file and copy into it; cog's convert creates the file first and leaves it behind when
  the copy fails, so downloading first also means a failed download leaves no file.
- data: URIs whose base64 is longer than that cap allows are refused before cog decodes them.
- anything else goes to cog's own validate.

A refusal raises a `UserInputError` (a ValueError); coglet fails that prediction with "Input validation
error: <our message>" and the worker stays ready for the next one. The policy and timeouts come from the
`ServerConfig` that predict.py's setup hands to `install` (LORA_ALLOW_PRIVATE_URLS=1 lets image URLs reach
private addresses too: tests, local mirrors). This module never imports cog (docs/DESIGN.md,
"Architecture": only predict.py does); predict.py hands it `cog.types`.

Strings that are not URLs never reach `validate`: coglet passes them to predict() as plain `str`, which
would make the server open its own files ("/etc/passwd", another request's outputs). `require_file`
refuses those; cog's downloads and script/predict's local files arrive as path objects.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from guarded_download import (
    AddressPolicy,
    DownloadError,
    HTTPStatusError,
    RetryPolicy,
    SizeLimit,
    Timeouts,
    download,
    format_size,
    make_client,
    redact_url,
)
from serverconfig import ServerConfig
from serverconfig.downloads import address_policy, timeouts, with_advice

from .errors import UserInputError
from .images import MAX_INPUT_BYTES

logger = logging.getLogger(__name__)

SUBJECT = "an input image"
_DATA_URI_SLACK = 4096  # the "data:image/png;base64," header and line breaks


class GuardedDownload(io.RawIOBase):
    """A read-only file of `url`'s body, downloaded on the first read under the policy and the cap."""

    def __init__(
        self,
        url: str,
        policy: AddressPolicy,
        timeouts: Timeouts,
        limit: SizeLimit,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self.url, self.policy, self.timeouts, self.limit = url, policy, timeouts, limit
        self.retry = retry or RetryPolicy()
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

    def _download(self) -> io.BufferedReader:
        # Downloaded into a named temp file (download() resumes by path), opened, then unlinked at once:
        # the open handle keeps the bytes, and nothing is left behind whatever happens next.
        fd, name = tempfile.mkstemp(prefix="input-image-")
        os.close(fd)
        path = Path(name)
        try:
            with make_client(self.policy, self.timeouts) as client:
                download(client, self.url, path, headers={}, what=SUBJECT, limit=self.limit, retry=self.retry)
            return path.open("rb")
        except HTTPStatusError as error:
            raise UserInputError(
                f"The input image URL {error.url} answered HTTP {error.status}. Check that the URL is public and "
                "still valid (signed URLs expire)."
            ) from None
        except DownloadError as error:
            raise UserInputError(with_advice(error)) from error
        finally:
            path.unlink(missing_ok=True)


def install(cog_types: ModuleType, config: ServerConfig) -> None:
    """Wrap `cog_types.Path.validate` so URL inputs download under `config`'s policy and timeouts. Installing
    again (another setup in the same process) only replaces the configuration: it never wraps twice."""
    path_type = cog_types.Path
    guard = _Guard.from_config(config)
    installed = getattr(path_type.validate, "_guard", None)
    if installed is not None:
        installed[0] = guard
        return
    original = path_type.validate
    current = [guard]
    url_path_type = _downloading_first(cog_types.URLPath)

    def validate(cls: type, value: Any) -> Any:
        if isinstance(value, str):
            scheme = urlsplit(value).scheme.lower()
            if scheme in ("http", "https"):
                return url_path_type(
                    source=value, filename=cog_types.get_filename(value), fileobj=current[0].open(value)
                )
            if scheme == "data" and len(value) > MAX_INPUT_BYTES * 4 // 3 + _DATA_URI_SLACK:
                raise UserInputError(
                    f"The data: URI of an input image is {format_size(len(value))} of base64, more than an input "
                    f"image may be ({format_size(MAX_INPUT_BYTES)}). Send a smaller image."
                )
        return original(value)

    validate._guard = current  # type: ignore[attr-defined]
    path_type.validate = classmethod(validate)


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
    """What every image download shares: the policy, the timeouts and the cap."""

    def __init__(self, policy: AddressPolicy, timeouts: Timeouts) -> None:
        self.policy, self.timeouts = policy, timeouts
        self.limit = SizeLimit(
            MAX_INPUT_BYTES, f"an input image may be ({format_size(MAX_INPUT_BYTES)}). Send a smaller image."
        )

    @classmethod
    def from_config(cls, config: ServerConfig) -> _Guard:
        policy = address_policy(config, SUBJECT)
        logger.debug("Image URL inputs download through the address policy (private allowed: %s)", policy.allow_private)
        return cls(policy, timeouts(config))

    def open(self, url: str) -> GuardedDownload:
        return GuardedDownload(url, self.policy, self.timeouts, self.limit)


def require_file(value: str | os.PathLike | None, name: str) -> str | os.PathLike | None:
    """`value` unless it is a plain string: a path the client typed, which must not open server files."""
    if value is None or isinstance(value, os.PathLike):
        return value
    shown = redact_url(value) if "://" in value else value
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise UserInputError(
        f"The {name} must be an http(s) URL or a data: URI, not {shown!r}: the server does not read its own files."
    )
