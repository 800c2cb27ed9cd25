"""Logs a user reads: plain lines on stdout (Cog turns them into the prediction's logs), stage timings
and a line per denoising step."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


class _PlainFormatter(logging.Formatter):
    """Info lines as-is, like the reference's prints; warnings and errors say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.capitalize()}: {message}"
        return message


def configure_logging(level: int = logging.INFO) -> None:
    """Send this project's INFO logs to stdout once; noisy libraries stay at WARNING."""
    root = logging.getLogger()
    if any(getattr(h, "_flux_server", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_PlainFormatter("%(message)s"))
    handler._flux_server = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("generation", "weights", "lora_loader", "predict", "__main__"):
        logging.getLogger(name).setLevel(level)
    _quiet_libraries()


def _quiet_libraries() -> None:
    """Loading bars and per-request INFO lines from libraries would bury the lines users need."""
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    for name in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Log how long a stage took, so slow predictions show where the time went."""
    start = time.perf_counter()
    yield
    logger.info("%s took %.2f s", name, time.perf_counter() - start)


def step_logger(label: str, total_steps: int) -> Callable:
    """A diffusers `callback_on_step_end` that logs one line per denoising step."""
    start = time.perf_counter()

    def on_step_end(pipeline, step: int, timestep, callback_kwargs: dict) -> dict:
        elapsed = time.perf_counter() - start
        logger.info("%s step %d/%d (%.2f s)", label, step + 1, total_steps, elapsed)
        return callback_kwargs

    return on_step_end
