"""Faults a fake site can be told to commit, each on the requests for one target, a given number of times.

A fault names its `target` the way its site names what it serves: a URL path on a plain file server,
`(repo_id, filename)` on the Hugging Face Hub (whose files are reached through two hosts). The site keeps
its faults in a list; the code that serves a request claims the first fault of a kind that acts on it
(`FakeSite.claim`), which counts a hit. So a fault acts exactly `times` times (None: until cleared), and
a test can read `hits` to see that it did.

`DropConnection`, `Stall`, `Drip` and `WrongLength` act on file bodies, in the core's file serving, so every
fake that serves files has them. `FailWith` is an error answer; a fake claims it where its site would fail.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TypeVar


@dataclass(kw_only=True)
class Fault:
    """Something that goes wrong on requests for `target`, `times` times (None: until cleared)."""

    target: Hashable
    times: int | None = 1
    hits: int = 0

    def claim(self, target: Hashable, **context: int) -> bool:
        """Count a hit and say yes when this fault acts on that request (`context` is kind-specific)."""
        if target != self.target or not self.applies(**context):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True

    def applies(self, **context: int) -> bool:
        return True


@dataclass(kw_only=True)
class DropConnection(Fault):
    """Close the connection once the response reaches byte `after_bytes` of the file.

    The offset is absolute in the file: a Range request that resumes at or past it is cut right after its
    headers, so `times=None` is an outage at that point that no resume gets past. A body that ends before
    the cut point goes through whole (and is not counted as a hit).
    """

    after_bytes: int

    def applies(self, *, end: int, **context: int) -> bool:
        return self.after_bytes < end


@dataclass(kw_only=True)
class Stall(Fault):
    """Send the headers and `after_bytes` of the body, then go silent for `seconds` and hang up.

    The silence ends early when the site releases its stalls (reset or close), so a test never waits
    for a stall it no longer needs.
    """

    after_bytes: int
    seconds: float


@dataclass(kw_only=True)
class Drip(Fault):
    """Send the headers (the whole body's Content-Length), then the body `bytes_per_tick` bytes every `interval`
    seconds: a sender never silent long enough for a read timeout, that finishes whenever it likes.

    The drip ends early, with the connection cut, when the site releases its stalls (reset or close).
    """

    bytes_per_tick: int = 1
    interval: float = 0.5


@dataclass(kw_only=True)
class WrongLength(Fault):
    """Announce `announced` as the Content-Length (None: no Content-Length at all) while sending the real
    body, then hang up."""

    announced: int | None


@dataclass(kw_only=True)
class FailWith(Fault):
    """Answer `status` instead of the real answer (a 503 during a deploy, a 429 burst)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Retry-After


FaultT = TypeVar("FaultT", bound=Fault)
