"""Several predictions at once, one on the GPU: what the async Cog predictor awaits.

Why: coglet 0.23.1 answers a prediction before it frees the prediction's slot (the worker reports the slot idle
on another channel after the answer; docs/DESIGN.md, "Serving"), so with one slot a client that sends its next
request as soon as it has the answer gets `409 At capacity` now and then. With several slots (an async run()
and `@cog.concurrent(max=N)`) that next request takes another slot while the last one is freed, and requests
from clients that overlap wait here instead of being refused.

How: each prediction first reads its inputs and fetches its LoRAs (`GenerationService.prepare`, in a thread of its
own, so queued requests download while another one is on the GPU), then waits for the one GPU (an asyncio lock,
taken in the order the requests got ready) and renders there (`GenerationService.render`, in a thread, so the event
loop stays free for the other requests). Everything that changes the models (LoRAs attached, swapped, re-scaled)
happens under the lock, so each request sees exactly its own LoRAs.

Cancel: a prediction still preparing has its downloads stopped (`cancel.in_interruptible_thread`); one waiting
for the GPU leaves the queue; the one on the GPU stops at its next denoising step, and keeps the lock until its
thread has stopped, so the next prediction never overlaps it. In each case the cancel is reported at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from .cancel import CancelFlag, in_interruptible_thread
from .request import GenerationRequest
from .result import GenerationResult
from .service import GenerationService, PreparedRequest


class GpuQueue:
    """Runs predictions for an async predictor: preparation side by side, rendering one at a time."""

    def __init__(self, service: GenerationService):
        self.service = service
        self._gpu = asyncio.Lock()  # bound to the event loop that first waits on it (Cog's one loop)

    async def generate(self, make_request: Callable[[], GenerationRequest]) -> GenerationResult:
        """The result of the request `make_request()` builds (in the preparing thread: it may download)."""
        prepared = await in_interruptible_thread(lambda: self.service.prepare(make_request()))
        waiting = time.perf_counter()
        async with self._gpu:
            return await self._render(prepared, queued=time.perf_counter() - waiting)

    async def _render(self, prepared: PreparedRequest, queued: float) -> GenerationResult:
        cancel = CancelFlag()
        work = asyncio.ensure_future(asyncio.to_thread(self.service.render, prepared, cancel, queued))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()  # the thread stops at its next denoising step (or between stages)
            while not work.done():  # keep the GPU until it has; another cancel changes nothing
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({work})
            work.exception()  # retrieved: its PredictionCancelled (or its own error) is this cancel now
            raise
