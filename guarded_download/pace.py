"""How long a download may take and how slowly its bytes may come: a deadline and a minimum rate.

A read timeout only bounds silence: a server that sends one byte every half second never trips it, and holds
the download (on a Cog server, its only prediction slot) for as long as it likes. So every download also has:

- a minimum rate, judged over a window: once an attempt has run for `window` seconds, the bytes of the last
  `window` seconds (or a little more) must average at least `min_rate` bytes a second. Judged over a window,
  not read by read, so a healthy server that sends in bursts passes, and a slow one fails one window after
  it slowed down.
- a deadline for the whole download, retries and backoffs included: `budget(size)` = `deadline` seconds
  plus the time its size takes at the minimum rate. The size is the announced one when there is one, else
  what has arrived so far, so a multi-GB LoRA gets the hours it needs at the minimum rate while a small file
  is not given them.

The download being timed is this thread's `running()` stopwatch (a context variable, set by `Stopwatch.timing`
around each attempt), and the transport reports every read of the connection to it (`transport.PacedStream`):
headers count as much as the body, so a server that drips its headers is cut off too, and every read and
connect waits no longer than the time left. Both limits fail with a `TooSlow` error, which is final: retrying
a server that drips would only hold the slot longer. A server that sends nothing at all is the read timeout's
case (within the deadline).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from .errors import BelowMinimumRate, PastDeadline
from .limits import format_size

SAMPLES_PER_WINDOW = 8  # the rate's baseline is at most window/8 older than the window: memory stays small


@dataclass(frozen=True)
class Pace:
    """The deadline and minimum rate every download is held to (see the module docstring)."""

    deadline: float = 600.0  # seconds any download gets, whatever its size
    min_rate: float = 100_000.0  # bytes a second over `window`; the deadline also grows by size at this rate
    window: float = 30.0  # seconds of arrival the rate is judged over
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def budget(self, size: int) -> float:
        """Seconds a download of `size` bytes may take: the deadline, plus that size at the minimum rate."""
        return self.deadline + size / self.min_rate

    def start(self, what: str) -> Stopwatch:
        """The clock of one download of `what` (its name in messages), started now."""
        return Stopwatch(self, what)


class Stopwatch:
    """One download against its pace: the deadline of the whole download, the rate of the attempt running."""

    def __init__(self, pace: Pace, what: str) -> None:
        self.pace, self.what = pace, what
        self.started = pace.clock()
        self.size: int | None = None  # the announced size, once a response said it
        self.received = 0  # bytes read over every attempt, headers included: what the rate counts
        self.progress = 0  # bytes of the file itself so far: what the deadline counts when no size was announced
        self._samples: deque[tuple[float, int]] = deque()  # (time, received) during the attempt running

    # -- the deadline ----------------------------------------------------------------------------------

    def allowed(self) -> float:
        """Seconds this download may take, by the size announced (else the bytes of the file so far)."""
        return self.pace.budget(self.size if self.size is not None else self.progress)

    def remaining(self) -> float:
        return self.allowed() - (self.pace.clock() - self.started)

    def check_deadline(self) -> None:
        """PastDeadline when the time is up."""
        if self.remaining() <= 0:
            size = format_size(self.size) if self.size is not None else "what arrived"
            raise PastDeadline(
                self.what,
                f"Could not download {self.what} within the {format_seconds(self.allowed())} allowed "
                f"({format_seconds(self.pace.deadline)} plus {size} at {format_rate(self.pace.min_rate)}). The site is "
                "too slow or keeps failing; try again later, or use a faster host.",
            )

    def clip(self, timeout: float | None) -> float:
        """`timeout` (None: no limit) cut to the time left; PastDeadline when none is."""
        self.check_deadline()
        left = self.remaining()
        return left if timeout is None else min(timeout, left)

    @contextmanager
    def timing(self) -> Iterator[Stopwatch]:
        """Make this the download `running()` in this thread (the transport reports its reads to it)."""
        token = _running.set(self)
        try:
            yield self
        finally:
            _running.reset(token)

    # -- the rate ----------------------------------------------------------------------------------------

    def attempt_started(self) -> None:
        """An attempt (a request) starts now: the rate is judged from here."""
        self._samples = deque([(self.pace.clock(), self.received)])

    def expect(self, size: int | None) -> None:
        """A response announced the download's whole size (when not None): the deadline follows it."""
        if size is not None:
            self.size = size

    def advanced(self, written: int) -> None:
        """The file now has `written` bytes (the deadline's size while none was announced)."""
        self.progress = written

    def arrived(self, count: int) -> None:
        """`count` more bytes arrived: BelowMinimumRate or PastDeadline when the download is too slow."""
        self.received += count
        now = self.pace.clock()
        self._check_rate(now)
        self.check_deadline()

    def _check_rate(self, now: float) -> None:
        samples, window = self._samples, self.pace.window
        if not samples or now - samples[-1][0] >= window / SAMPLES_PER_WINDOW:
            samples.append((now, self.received))
        while len(samples) > 1 and samples[1][0] <= now - window:
            samples.popleft()  # samples[0] stays the newest one at least a window old: the baseline
        since, then = samples[0]
        span, got = now - since, self.received - then
        if span >= window and got < self.pace.min_rate * span:
            raise BelowMinimumRate(
                self.what,
                f"Could not download {self.what}: only {format_size(got)} arrived in the last {format_seconds(span)} "
                f"({format_rate(got / span)}), less than the {format_rate(self.pace.min_rate)} a download must "
                "keep up. The site is too slow or holds the connection open; try again later, or use a faster host.",
            )


_running: ContextVar[Stopwatch | None] = ContextVar("guarded_download_running", default=None)


def running() -> Stopwatch | None:
    """The stopwatch of the download this thread is running, if any."""
    return _running.get()


def format_rate(bytes_per_second: float) -> str:
    return f"{format_size(int(bytes_per_second))}/s"


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
