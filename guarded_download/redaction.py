"""URLs without their secrets, in messages and in library log lines.

A signed URL carries its credentials in the query string, and a URL may carry `user:password@`. Nothing
this package says shows either: `redact_url` is what errors and log lines print. httpx2's and httpcore2's
own request lines, and huggingface_hub's retry warnings, would print whole URLs, so a filter on those
loggers strips queries and userinfo from them; it is installed when the package is imported.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*")
_URL_USERINFO = re.compile(r"(https?://)[^\s/?#@'\"]*@", re.IGNORECASE)
# Logger filters do not apply to child loggers, so each logger that prints URLs is named.
_URL_LOGGERS = (
    "httpx",
    "httpx2",
    "huggingface_hub.file_download",
    "huggingface_hub.utils._http",
    *(f"{core}.{part}" for core in ("httpcore", "httpcore2") for part in ("connection", "http11", "http2", "proxy")),
)


def redact_url(url: str) -> str:
    """`url` without userinfo, query or fragment (they can hold credentials); `?…` marks a dropped query."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket: cut the secrets out of the text instead
        return _redact_text(url)
    host_port = parts.netloc.rpartition("@")[2].lower()  # as written, so a bad port is shown as it was given
    marker = "?…" if parts.query else ""
    return f"{parts.scheme.lower()}://{host_port}{parts.path}{marker}"


def _redact_text(text: str) -> str:
    """URLs in `text` without their userinfo and query strings."""
    return _URL_QUERY.sub(r"\1?…", _URL_USERINFO.sub(r"\1", text)).split("#", 1)[0]


class RedactQueries(logging.Filter):
    """Strip query strings and userinfo from URLs in library log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _URL_QUERY.sub(r"\1?…", _URL_USERINFO.sub(r"\1", message))
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def install_log_redaction() -> None:
    """Add the filter to every library logger that prints URLs; idempotent."""
    for name in _URL_LOGGERS:
        library_logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueries) for f in library_logger.filters):
            library_logger.addFilter(RedactQueries())
