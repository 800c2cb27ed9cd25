"""Downloads of URLs that strangers chose: only public addresses, pinned connections, capped, resumable.

LoRA strings and image URLs come from whoever sends a prediction, so the server must not fetch from its own
network, must not be steered there by DNS or redirects, must not fill its disk, and must survive dropped
connections and flaky servers. This package does exactly that, for anyone in the server who downloads a
URL it did not choose (`lora_loader` for LoRA files and the CivitAI/Replicate APIs, `generation.input_urls`
for image inputs):

    policy = AddressPolicy(subject="a LoRA")                        # public addresses only
    pace = Pace(deadline=600, min_rate=100_000, window=30)          # no drip holds a download for long
    with make_client(policy, Timeouts(connect=10, read=30)) as client:
        download(client, url, dest, headers=bearer(token), what="LoRA x", limit=SizeLimit(6 * 10**9, "..."),
                 retry=RetryPolicy(), pace=pace)
        get_json(client, api_url, bearer(token), RetryPolicy(), pace)

Modules, from the wire up: `urls` (a host and port a request can use), `policy` (which addresses a host may
resolve to), `transport` (an httpx2 transport whose connections dial only the addresses the policy checked),
`client` (the client factory and JSON calls), `retry` (what is retried, the backoff, the final error),
`pace` (a deadline and a minimum rate, so a server that drips cannot hold a download), `transfer` (the
capped, resumable download), `limits` (`SizeLimit`, `format_size`), `redaction` (no query string or
userinfo in any message or log line), `errors` (the error tree, drawn in its docstring). It knows nothing
of LoRAs, images or environment variables: callers pass their words (`subject`, `what`, a limit's advice)
and map `DownloadError`s to their own error type, adding the advice only they know.

One HTTP stack: this runs on httpx2 + httpcore2, the client huggingface_hub 2.x uses, not httpx + httpcore.
httpx2 is the continuation of httpx with the same transport API, and the guarantees need nothing more than
httpx had: httpcore2's `ConnectionPool` takes a `network_backend` whose `connect_tcp` is called with the
URL's host for every new connection, the first URL's and each redirect's (so each is resolved, checked and
dialed by address here), and starts TLS on the returned stream with `server_hostname` from the URL (so SNI
and certificate checks are for the name); a client given its own transport and `trust_env=False` mounts no
environment proxy. TLS verification uses httpcore2's default context (the system trust store, through
truststore), the same as huggingface_hub's downloads. tests/test_url_safety.py proves each guarantee
against this stack: refused and rebinding hosts, redirects to refused hosts, proxies ignored, SNI kept.
"""

from .client import Timeouts, bearer, get_json, make_client
from .errors import (
    AddressRefused,
    BelowMinimumRate,
    DownloadError,
    GaveUp,
    HTTPStatusError,
    MalformedURL,
    NotJSON,
    PastDeadline,
    Refused,
    ResolutionFailed,
    SchemeRefused,
    TooLarge,
    TooManyRedirects,
    TooSlow,
    UndecodableBody,
    UnknownHost,
    UnusableAnswer,
)
from .limits import SizeLimit, format_size
from .pace import Pace, Stopwatch, format_rate
from .policy import AddressPolicy
from .redaction import install_log_redaction, redact_url
from .retry import RetryPolicy
from .transfer import DownloadResult, download
from .transport import GuardedTransport
from .urls import check_url, url_problem

install_log_redaction()

__all__ = [
    "AddressPolicy",
    "AddressRefused",
    "BelowMinimumRate",
    "DownloadError",
    "DownloadResult",
    "GaveUp",
    "GuardedTransport",
    "HTTPStatusError",
    "MalformedURL",
    "NotJSON",
    "Pace",
    "PastDeadline",
    "Refused",
    "ResolutionFailed",
    "RetryPolicy",
    "SchemeRefused",
    "SizeLimit",
    "Stopwatch",
    "Timeouts",
    "TooLarge",
    "TooManyRedirects",
    "TooSlow",
    "UndecodableBody",
    "UnknownHost",
    "UnusableAnswer",
    "bearer",
    "check_url",
    "download",
    "format_rate",
    "format_size",
    "get_json",
    "make_client",
    "redact_url",
    "url_problem",
]
