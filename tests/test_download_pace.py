"""guarded_download's pace: no sender holds a download (and the server's only slot) for as long as it likes.

First the rules on a clock the test drives (a window's rate, not a chunk's; a deadline that grows with the
size; timeouts cut to what is left), then against the fake file host: a drip fails one window in and is not
retried, a bursty but healthy server passes, retries and silence end at the deadline, API answers too.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from guarded_download import (
    AddressPolicy,
    BelowMinimumRate,
    Pace,
    PastDeadline,
    RetryPolicy,
    SizeLimit,
    Timeouts,
    download,
    get_json,
    make_client,
)
from serverconfig import ServerConfig
from serverconfig.downloads import pace, with_advice
from testkit.fakes.lora_servers import FakeServer
from testkit.helpers import digest

ALLOWED = AddressPolicy(allow_private=True)
LIMIT = SizeLimit(10**7, "a test file may be.")


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the rules, on a driven clock ----------------------------------------------------------------------------------


def test_the_rate_is_judged_over_a_window_so_bursts_pass_and_a_drip_fails_one_window_in() -> None:
    clock = Clock()
    watch = Pace(deadline=10_000, min_rate=1000, window=10, clock=clock).start("the file")
    watch.attempt_started()
    for _ in range(20):  # 20 kB every 9 s: nothing at all for most of each window, 2.2 kB/s over any of them
        clock.now += 9
        watch.arrived(20_000)

    clock.now += 5
    watch.arrived(1)  # slower now, but the last window still holds a burst
    with pytest.raises(
        BelowMinimumRate, match=r"the file: only \d+ B arrived in the last 1\d s .* less than the 1.0 kB/s"
    ):
        for _ in range(40):  # one byte every half second
            clock.now += 0.5
            watch.arrived(1)
    assert clock.now - 1000 < 9 * 20 + 5 + 10 + 9 + 2, "cut off within about a window of slowing down"


def test_a_slow_start_is_not_judged_before_a_whole_window() -> None:
    clock = Clock()
    watch = Pace(deadline=10_000, min_rate=1000, window=10, clock=clock).start("the file")
    watch.attempt_started()
    clock.now += 9.9
    watch.arrived(1)  # 9.9 s for one byte: no window has passed yet
    clock.now += 0.2
    with pytest.raises(BelowMinimumRate):
        watch.arrived(1)


def test_the_deadline_is_a_floor_plus_the_size_at_the_minimum_rate() -> None:
    clock = Clock()
    rules = Pace(deadline=60, min_rate=1000, window=10, clock=clock)
    assert rules.budget(0) == 60 and rules.budget(5_000_000) == 60 + 5000  # a 5 MB file: 5000 s more

    announced = rules.start("the announced file")
    announced.expect(10_000)  # 60 s + 10 s
    clock.now += 69
    announced.check_deadline()
    clock.now += 2
    with pytest.raises(PastDeadline, match=r"the announced file within the 70 s allowed \(60 s plus 10.0 kB at 1.0"):
        announced.check_deadline()

    unknown = rules.start("the unannounced file")  # no Content-Length: the bytes so far count
    clock.now += 61
    with pytest.raises(PastDeadline):
        unknown.check_deadline()
    unknown.advanced(5000)
    unknown.check_deadline()  # 65 s allowed now


def test_every_wait_is_cut_to_the_time_left() -> None:
    clock = Clock()
    watch = Pace(deadline=5, min_rate=1000, window=10, clock=clock).start("x")
    clock.now += 2
    assert (watch.clip(30), watch.clip(None), watch.clip(1)) == (3, 3, 1)
    clock.now += 3
    with pytest.raises(PastDeadline):
        watch.clip(30)


def test_the_configuration_gives_the_pace_and_the_advice() -> None:
    config = ServerConfig.from_env(
        {
            "DOWNLOAD_DEADLINE_SECONDS": "90",
            "DOWNLOAD_MIN_BYTES_PER_SECOND": "50kB",
            "DOWNLOAD_RATE_WINDOW_SECONDS": "5",
        }
    )
    assert pace(config) == Pace(deadline=90, min_rate=50_000, window=5)
    assert pace(ServerConfig()) == Pace(deadline=600, min_rate=100_000, window=30)
    slow, late = BelowMinimumRate("x", "Too slow."), PastDeadline("x", "Too late.")
    assert with_advice(slow).endswith("An operator can lower DOWNLOAD_MIN_BYTES_PER_SECOND for slow sites.")
    assert with_advice(late).endswith("An operator can raise DOWNLOAD_DEADLINE_SECONDS for slow sites.")


# -- against a real (fake) server ---------------------------------------------------------------------------------


def fetch(url: str, dest: Path, rules: Pace, retry: RetryPolicy | None = None, read: float = 5) -> None:
    with make_client(ALLOWED, Timeouts(connect=2, read=read)) as client:
        download(client, url, dest, headers={}, what="the file", limit=LIMIT, retry=retry or RetryPolicy(), pace=rules)


def test_a_drip_fails_one_window_in_and_is_not_retried(files: FakeServer, tmp_path: Path) -> None:
    url = files.add_file("/drip.bin", bytes(5_000_000))  # announces 5 MB, sends 1 byte every 0.05 s
    files.drip("/drip.bin", bytes_per_tick=1, interval=0.05)
    started = time.monotonic()

    with pytest.raises(BelowMinimumRate, match=r"the file: only \d+ B arrived in the last 0\.\d s"):
        fetch(url, tmp_path / "out", Pace(deadline=60, min_rate=1000, window=0.5))

    assert time.monotonic() - started < 3  # a window and a little: not the 70 hours the sender wanted
    assert len(files.gets("/drip.bin")) == 1, "a drip is not retried"


def test_a_bursty_but_healthy_server_passes(files: FakeServer, tmp_path: Path) -> None:
    data = bytes(range(256)) * 200  # 51 kB in 10 kB bursts every 0.1 s: 100 kB/s, nothing between bursts
    url = files.add_file("/bursty.bin", data)
    files.drip("/bursty.bin", bytes_per_tick=10_000, interval=0.1)

    fetch(url, tmp_path / "out", Pace(deadline=60, min_rate=20_000, window=0.25))

    assert digest((tmp_path / "out").read_bytes()) == digest(data)


def test_retries_end_at_the_deadline(files: FakeServer, tmp_path: Path) -> None:
    url = files.add_file("/down.bin", bytes(1000))
    files.fail("/down.bin", 503, times=1000)
    retry = RetryPolicy(attempts=1000, base_delay=0.05, max_delay=0.05, max_total_attempts=1000)
    started = time.monotonic()

    with pytest.raises(
        PastDeadline, match=r"the file within the 0.6 s allowed \(0.6 s plus what arrived at 1.0 kB/s\)"
    ):
        fetch(url, tmp_path / "out", Pace(deadline=0.6, min_rate=1000, window=10), retry)

    assert time.monotonic() - started < 2


def test_silence_ends_at_the_deadline_not_the_read_timeout(files: FakeServer, tmp_path: Path) -> None:
    url = files.add_file("/silent.bin", bytes(100_000))
    files.stall("/silent.bin", after_bytes=1000, seconds=30, times=None)
    started = time.monotonic()

    with pytest.raises(PastDeadline):
        fetch(url, tmp_path / "out", Pace(deadline=0.5, min_rate=1_000_000, window=10), read=30)

    assert time.monotonic() - started < 2


def test_api_answers_are_held_to_the_pace_too(files: FakeServer) -> None:
    files.add_file("/api/model.json", b'{"id": 1, "padding": "' + b"x" * 20_000 + b'"}')
    files.drip("/api/model.json", bytes_per_tick=10, interval=0.05)

    with make_client(ALLOWED, Timeouts(connect=2, read=5)) as client:
        with pytest.raises(BelowMinimumRate, match="/api/model.json: only"):
            get_json(client, files.url("/api/model.json"), {}, RetryPolicy(), Pace(60, min_rate=1000, window=0.3))
        assert get_json(client, files.url("/api/model.json"), {}, RetryPolicy())["id"] == 1  # the drip was once


def test_headers_that_drip_are_cut_off_too(tmp_path: Path) -> None:
    """The pace is judged on every read of the connection, not only on the body: a server that sends its status
    line and headers a byte at a time (each read well within the read timeout) is a drip like any other."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Padding: " + b"x" * 2000 + b"\r\n\r\nhello"
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            for byte in response:
                if stop.wait(0.05):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow-headers.bin"
    started = time.monotonic()
    try:
        with pytest.raises(BelowMinimumRate, match=r"the file: only \d+ B arrived in the last 0\.\d s"):
            fetch(url, tmp_path / "out", Pace(deadline=60, min_rate=1000, window=0.5))
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 3
