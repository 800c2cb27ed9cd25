"""Stopping a cancelled prediction's work in the threads it runs in.

Cog cancels an async run() by cancelling its asyncio task, which stops only what the task is awaiting; the work
it handed to threads goes on unless told. Two kinds of work, two ways to tell them:

- denoising (`CancelFlag`): the GPU thread checks the flag between denoising steps and between stages and
  raises `PredictionCancelled`, so a cancelled prediction gives the GPU up within one step, and never in the
  middle of one (a LoRA swap or a step is never left half done);
- downloads (`in_interruptible_thread`): LoRA and image downloads have no step to check a flag at, so
  `PredictionCancelled` is raised inside their thread (`PyThreadState_SetAsyncExc`), exactly as coglet cancels a
  synchronous predictor: it lands between two chunks, the download stops and removes its partial files (the
  downloaders clean up on any BaseException).

`PredictionCancelled` is a BaseException, as coglet's CancelationException and asyncio's CancelledError are, so
no `except Exception` on the way swallows it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import ctypes
import threading
from collections.abc import Callable
from typing import Any


class PredictionCancelled(BaseException):
    """The prediction this work belongs to was cancelled."""


class CancelFlag:
    """Set by the cancelling side; checked by the working thread at points where stopping is safe."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise PredictionCancelled when the prediction was cancelled."""
        if self._event.is_set():
            raise PredictionCancelled


async def in_interruptible_thread(function: Callable[[], Any]) -> Any:
    """`function()` in a thread of its own (with the caller's context, so its logs reach the prediction's logs).
    When the awaiting task is cancelled, PredictionCancelled is raised inside that thread and the cancel goes on
    at once, without waiting for the thread to notice."""
    worker = _Interruptible(function, contextvars.copy_context())
    worker.start()
    try:
        return await asyncio.wrap_future(worker.future)
    except asyncio.CancelledError:
        worker.interrupt()
        raise


class _Interruptible(threading.Thread):
    """A thread running one function that `interrupt()` can stop with PredictionCancelled.

    An exception set with PyThreadState_SetAsyncExc is raised at the thread's next bytecode, whichever code that
    is. So it is set only while the function runs (`_running`, under `_lock`), and one set just as the function
    returned is caught where it lands, around the lock: it can never escape the thread or reach another's work.
    """

    def __init__(self, function: Callable[[], Any], context: contextvars.Context):
        super().__init__(name="prediction-inputs", daemon=True)
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self._function = function
        self._context = context
        self._lock = threading.Lock()
        self._running = False
        self._interrupted = False

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():  # cancelled before it began: nothing to run
            return
        # From here the awaiting side cannot cancel the future; it interrupts the function instead.
        outcome: tuple[Any] | BaseException | None = None
        while True:
            try:
                if outcome is None:
                    outcome = (self._run_function(),)
            except BaseException as error:  # the function's own error, or the interrupt
                outcome = error
            try:
                with self._lock:
                    self._running = False
                break
            except PredictionCancelled as late:  # set just as the function returned; there is only one
                outcome = late
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome[0])

    def _run_function(self) -> Any:
        with self._lock:
            if self._interrupted:
                raise PredictionCancelled
            self._running = True
        return self._context.run(self._function)

    def interrupt(self) -> None:
        """Raise PredictionCancelled in the thread if the function is still running (at most once)."""
        with self._lock:
            if self._interrupted:
                return
            self._interrupted = True
            if self._running and self.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.ident), ctypes.py_object(PredictionCancelled)
                )
