"""The one way guarded downloads get an HTTP client, and the one JSON call they make.

`make_client` builds an httpx2 client over `transport.GuardedTransport`: every request's scheme checked,
every connection (the first URL's and each redirect's) dialed only to addresses the policy resolved and
allowed, redirects followed but bounded, connect and read timeouts, bodies never content-decoded (so byte
offsets are file offsets when a download resumes). httpx2 drops `Authorization` when a redirect leaves the
origin, so a token sent to an API is not forwarded to the signed storage URL it redirects to. API answers
are held to the same `pace.Pace` as downloads, and capped at `MAX_JSON_BYTES`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import httpx2

from .errors import HTTPStatusError, NotJSON
from .limits import SizeLimit
from .pace import Pace
from .policy import AddressPolicy
from .redaction import redact_url
from .retry import MAX_REDIRECTS, RETRY_STATUSES, RetryPolicy, retrying, transient_status
from .transport import GuardedTransport
from .urls import check_url

USER_AGENT = "flux-lora-server/0.1 (guarded_download)"
MAX_JSON_BYTES = 16 * 10**6  # CivitAI's largest model answers are a few hundred kB
JSON_LIMIT = SizeLimit(MAX_JSON_BYTES, "an API answer may be. Check the site's base URL.")


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0  # to open a connection (each address tried)
    read: float = 30.0  # the longest a server may stay silent: before the headers or between two chunks

    def httpx(self) -> httpx2.Timeout:
        return httpx2.Timeout(self.read, connect=self.connect)


def make_client(
    policy: AddressPolicy, timeouts: Timeouts | None = None, transport: httpx2.BaseTransport | None = None
) -> httpx2.Client:
    """A client whose every connection passes `policy`; `transport` replaces the guarded one only in tests.

    `trust_env=False`: an HTTP(S)_PROXY from the environment would be mounted in front of the transport
    and resolve names itself, out of the address policy's reach.
    """
    return httpx2.Client(
        transport=transport or GuardedTransport(policy),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=(timeouts or Timeouts()).httpx(),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        trust_env=False,
    )


def bearer(token: str | None) -> dict[str, str]:
    """The Authorization header for `token`, or none."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def get_json(
    client: httpx2.Client, url: str, headers: Mapping[str, str], retry: RetryPolicy, pace: Pace | None = None
) -> object:
    """GET `url` as JSON, retrying transient failures, within `pace` (its defaults when None); HTTPStatusError
    on an error status. An API answer is kilobytes: one over `MAX_JSON_BYTES` is refused, not read."""
    check_url(url)
    shown = redact_url(url)
    watch = (pace or Pace()).start(shown)

    def attempt() -> object:
        watch.check_deadline()
        watch.attempt_started()
        with watch.timing(), client.stream("GET", url, headers=dict(headers)) as response:
            if response.status_code in RETRY_STATUSES:
                raise transient_status(response)
            body = _read_body(response, shown)
        if response.status_code >= 400:
            raise HTTPStatusError(response.status_code, url, body)
        try:
            return json.loads(body)
        except ValueError:
            raise NotJSON(f"{shown} did not answer with JSON. Check the site's base URL.") from None

    return retrying(attempt, shown, retry, watch)


def _read_body(response: httpx2.Response, shown: str) -> bytes:
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        JSON_LIMIT.check(f"The answer of {shown}", len(body))
    return bytes(body)
