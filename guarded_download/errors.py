"""What the guarded downloader raises on purpose. Each message is a sentence a user can act on; callers map
these to their own error type (`LoraError`, `UserInputError`) and add the advice only they know, such as
which setting an operator changes.

    DownloadError                 anything below; never raised itself
    ├── Refused                   the request was not sent: the URL is not one this downloader may fetch
    │   ├── SchemeRefused         not http:// or https://
    │   ├── MalformedURL          a host or port no request can use (`urls.check_url`)
    │   └── AddressRefused        the host is, or resolves to, a refused address (loopback, private,
    │                             link-local / cloud metadata, reserved), checked again on every redirect
    ├── ResolutionFailed          the host name does not resolve for now (the transport retries this as a
    │   │                         connect error; `AddressPolicy.check` raises it directly)
    │   └── UnknownHost           DNS says the name does not exist (NXDOMAIN): a typo no retry fixes
    ├── TooLarge                  announced or received size above the `SizeLimit`; nothing is kept
    ├── TooSlow                   the download would hold the server too long (`pace`); not retried
    │   ├── BelowMinimumRate      fewer bytes over a window than the minimum rate asks
    │   └── PastDeadline          longer than the download's deadline, retries included
    ├── HTTPStatusError           a final error status (4xx, or 5xx after the retries); the caller words it
    ├── UnusableAnswer            an answer no retry would change
    │   ├── TooManyRedirects      a redirect loop
    │   ├── UndecodableBody       a body in an encoding it does not decode from
    │   └── NotJSON               an API call answered with something else
    └── GaveUp                    every attempt failed (dropped connections, silence, 5xx, short bodies)

Transport errors of httpx2 (`httpx2.TransportError`) never leave the package: they are retried, and end as
`GaveUp` with the last one named. Anything else (a full disk, a bug) propagates as its own type.
"""

from __future__ import annotations

import json

from .redaction import redact_url

ERROR_DETAIL_CHARS = 200


class DownloadError(Exception):
    """A download that cannot be done as asked; the message says why (never with a query string)."""


class Refused(DownloadError):
    """The request was not sent: the policy does not allow this URL."""


class SchemeRefused(Refused):
    def __init__(self, subject: str, scheme: str) -> None:
        self.scheme = scheme
        super().__init__(f"Downloads of {subject} use http or https, not {scheme}://.")


class MalformedURL(Refused):
    """A URL whose host or port no request can use; `url` is redacted, `why` says what is wrong."""

    def __init__(self, url: str, why: str) -> None:
        self.url, self.why = url, why
        super().__init__(f"{url} is not a valid URL: {why}. Check the URL.")


class AddressRefused(Refused):
    """The host is one the policy refuses; the message names the host and why, never the URL."""

    def __init__(self, subject: str, host: str, reason: str) -> None:
        self.host, self.reason = host, reason
        super().__init__(
            f"Refusing to download {subject} from {host}: it is {reason}. URLs must point to the public internet."
        )


class ResolutionFailed(DownloadError):
    """The host name did not resolve (perhaps only for now)."""


class UnknownHost(ResolutionFailed):
    """DNS answered that the name does not exist, or has no address: raised at once, never retried, since
    waiting changes nothing for a mistyped host (a resolver that cannot answer for now is `ResolutionFailed`)."""

    def __init__(self, subject: str, host: str) -> None:
        self.host = host
        super().__init__(
            f"Cannot download {subject} from {host}: no such host (DNS does not know the name). Check the URL."
        )


class TooLarge(DownloadError):
    """More bytes than the limit allows, from the announced size or from the bytes received."""

    def __init__(self, what: str, size: int, max_bytes: int, message: str) -> None:
        self.what, self.size, self.max_bytes = what, size, max_bytes
        super().__init__(message)


class TooSlow(DownloadError):
    """The download would hold the server for too long; retrying would only hold it longer."""

    def __init__(self, what: str, message: str) -> None:
        self.what = what
        super().__init__(message)


class BelowMinimumRate(TooSlow):
    pass


class PastDeadline(TooSlow):
    pass


class HTTPStatusError(DownloadError):
    """A final error status. `url` is redacted (no query: signed URLs carry credentials there); `detail` is
    the server's short reason when its body said one ({"error": ...}, {"message": ...}, {"detail": ...})."""

    def __init__(self, status: int, url: str, body: bytes = b"") -> None:
        self.status, self.url, self.detail = status, redact_url(url), _detail(body)
        super().__init__(f"HTTP {status} from {self.url}" + (f": {self.detail}" if self.detail else ""))


class UnusableAnswer(DownloadError):
    """The server answered, but with something no retry would change."""


class TooManyRedirects(UnusableAnswer):
    pass


class UndecodableBody(UnusableAnswer):
    pass


class NotJSON(UnusableAnswer):
    pass


class GaveUp(DownloadError):
    """Every attempt failed. `stalled`: the last one because the server went silent (the read timeout)."""

    def __init__(self, what: str, attempts: int, reason: str, stalled: bool) -> None:
        self.what, self.attempts, self.reason, self.stalled = what, attempts, reason, stalled
        silence = " The server stopped sending data." if stalled else ""
        super().__init__(
            f"Could not download {what}: {attempts} attempts failed (last: {reason}).{silence} "
            "The site may be down or unreachable from here; try again later."
        )


def _detail(body: bytes) -> str:
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        return ""
    if isinstance(parsed, dict):
        for key in ("error", "message", "detail"):
            if isinstance(parsed.get(key), str):
                return parsed[key][:ERROR_DETAIL_CHARS]
    return ""
