"""The async predictor's queue (generation/gpu_queue.py) and cancelling work in threads (generation/cancel.py),
with a stand-in service whose steps the test drives: one render at a time, preparation beside it, first come
first served, and cancel of a preparing, a queued and a rendering prediction."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from generation.cancel import CancelFlag, PredictionCancelled, in_interruptible_thread
from generation.gpu_queue import GpuQueue
from testkit.cog_server import cog_max_concurrency


class SteppedService:
    """prepare() and render() that record what ran when; render() runs steps of 10 ms (5, or as `steps` says for
    a request), checking its cancel flag after each, as the denoising callback does."""

    def __init__(self, **steps: int) -> None:
        self.steps = steps
        self.events: list[tuple[str, str]] = []
        self.rendering = 0
        self.most_rendering = 0
        self.flags: dict[str, CancelFlag] = {}
        self._lock = threading.Lock()

    def prepare(self, name: str) -> str:
        self.events.append(("prepared", name))
        return name

    def render(self, name: str, cancel: CancelFlag, queued: float) -> str:
        with self._lock:
            self.rendering += 1
            self.most_rendering = max(self.most_rendering, self.rendering)
        self.flags[name] = cancel
        self.events.append(("render", name))
        try:
            for _ in range(self.steps.get(name, 5)):
                time.sleep(0.01)
                cancel.check()
            return name
        finally:
            self.events.append(("rendered", name))
            with self._lock:
                self.rendering -= 1


async def started(service: SteppedService, name: str) -> None:
    while ("render", name) not in service.events:
        await asyncio.sleep(0.005)


def test_renders_run_one_at_a_time_in_arrival_order_and_all_succeed():
    service = SteppedService()
    queue = GpuQueue(service)

    async def main():
        return await asyncio.gather(*(queue.generate(lambda n=n: n) for n in "abcd"))

    assert asyncio.run(main()) == list("abcd")
    assert service.most_rendering == 1
    assert [name for event, name in service.events if event == "render"] == list("abcd")


def test_a_request_prepares_while_another_renders():
    service = SteppedService(a=20)
    queue = GpuQueue(service)

    async def main():
        first = asyncio.ensure_future(queue.generate(lambda: "a"))
        await started(service, "a")
        second = asyncio.ensure_future(queue.generate(lambda: "b"))
        await asyncio.gather(first, second)

    asyncio.run(main())
    assert service.events.index(("prepared", "b")) < service.events.index(("rendered", "a"))


def test_cancelling_a_queued_request_takes_it_out_of_the_queue():
    service = SteppedService(a=20)
    queue = GpuQueue(service)

    async def main():
        running = asyncio.ensure_future(queue.generate(lambda: "a"))
        await started(service, "a")
        queued = asyncio.ensure_future(queue.generate(lambda: "b"))
        while ("prepared", "b") not in service.events:
            await asyncio.sleep(0.005)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert await running == "a"
        assert await queue.generate(lambda: "c") == "c"

    asyncio.run(main())
    assert ("render", "b") not in service.events


def test_cancelling_the_running_request_stops_it_and_keeps_the_gpu_until_it_has():
    service = SteppedService(a=500)  # 5 s if it ran to the end
    queue = GpuQueue(service)

    async def main():
        running = asyncio.ensure_future(queue.generate(lambda: "a"))
        await started(service, "a")
        waiting = asyncio.ensure_future(queue.generate(lambda: "b"))
        begun = time.perf_counter()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert time.perf_counter() - begun < 1, "it stopped at its next step"
        assert await waiting == "b"

    asyncio.run(main())
    assert service.flags["a"].is_set()
    assert service.events.index(("rendered", "a")) < service.events.index(("render", "b"))
    assert service.most_rendering == 1


def test_a_cancelled_download_thread_stops_between_two_chunks_and_cleans_up():
    chunks: list[int] = []
    cleaned = threading.Event()

    def download() -> None:
        try:
            for chunk in range(1000):  # 10 s if nothing stopped it
                time.sleep(0.01)
                chunks.append(chunk)
        finally:
            cleaned.set()

    async def main():
        task = asyncio.ensure_future(in_interruptible_thread(download))
        while len(chunks) < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cleaned.wait(2), "PredictionCancelled reached the thread, which ran its cleanup"
    assert len(chunks) < 1000


def test_an_interruptible_thread_returns_its_result_or_raises_its_error_and_keeps_the_context():
    prediction = contextvars.ContextVar("prediction")  # as coglet routes a prediction's logs

    async def main():
        prediction.set("p-1")
        assert await in_interruptible_thread(prediction.get) == "p-1"
        with pytest.raises(ValueError, match="bad mask"):
            await in_interruptible_thread(lambda: (_ for _ in ()).throw(ValueError("bad mask")))

    asyncio.run(main())


def test_a_cancel_flag_raises_only_once_set():
    flag = CancelFlag()
    flag.check()
    flag.set()
    with pytest.raises(PredictionCancelled):
        flag.check()


@pytest.mark.parametrize("target", ["predict.py:Predictor", "predict.py:TrainedPredictor"])
def test_the_servers_we_start_get_the_slots_cog_build_reads_from_the_decorator(target):
    """A bare `python -m cog.server.http` ignores @cog.concurrent; script/serve and testkit pass it on."""
    import predict

    decorated = getattr(predict, target.split(":")[1]).run.__cog_concurrent_max__
    assert cog_max_concurrency(target) == decorated == 4
