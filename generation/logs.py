"""Logs a user reads: plain lines on stdout (Cog turns them into the prediction's logs), stage timings
and a line per denoising step.

Logs are for people: anything a script or test needs (seed, steps, stage times, LoRA events) is also returned
as data (`generation.result`), so a line here can be reworded without breaking anything.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Library notices addressed to whoever wires the libraries together, never actionable by the person reading a
# prediction's logs (and printed with an internal file path): (category, regex matched against the message start).
IGNORED_WARNINGS = (
    # peft, whenever a second adapter joins a model: that is how the main and the extra LoRA work.
    (UserWarning, r"Already found a `peft_config` attribute"),
    # Deprecations and planned changes in libraries are for this project's developers (pinned versions).
    (DeprecationWarning, ""),
    (FutureWarning, ""),
)

# Lines libraries log when first imported (setup) about features this server does not use; README, "Quick start".
IGNORED_NOTICES = {
    "torchao": "Failed to load ",  # its mxfp8/cutlass kernels (not used: go_fast's fp8 runs torch._scaled_mm)
    "torch.utils._pytree": "<enum ",  # torchao registering enums the way torch is deprecating
    "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao` Tensor objects",
    "torchao.kernel.intmm": "Warning: Detected no triton",  # CPU builds only; its int8 kernels are not used
}


class _KnownNotice(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_import_notices() -> None:
    """Drop the notices above; everything else those libraries log still shows."""
    for name, prefix in IGNORED_NOTICES.items():
        logger_ = logging.getLogger(name)
        if not any(isinstance(f, _KnownNotice) for f in logger_.filters):
            logger_.addFilter(_KnownNotice(prefix))


quiet_import_notices()  # now, at import: these libraries log while being imported, before setup() can run


# A log line's values come from LoRA files, upstream APIs and URLs (trigger words, model names, file names), so
# each value is escaped (no control character can start a forged line or move the cursor) and capped.
MAX_VALUE_CHARS = 300
MAX_LINE_CHARS = 2000
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str, limit: int) -> str:
    """`text` on one line: control characters as escapes (\\n, \\x1b, ...), cut to `limit` characters."""
    text = _UNSAFE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


class _PlainFormatter(logging.Formatter):
    """One line per record: info lines as-is, like the reference's prints; warnings and errors say what they are.
    Values are escaped and capped (`escape`); a traceback, logged only for bugs, keeps its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord({**record.__dict__, "msg": _one_line(record), "args": None})
        message = super().format(safe)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.capitalize()}: {message}"
        return message


def _one_line(record: logging.LogRecord) -> str:
    args = record.args
    if isinstance(args, tuple):
        args = tuple(_safe_value(value) for value in args)
    elif isinstance(args, dict):
        args = {key: _safe_value(value) for key, value in args.items()}
    try:
        message = str(record.msg) % args if args else str(record.msg)
    except (TypeError, ValueError):  # a malformed call: show what there is rather than lose the line
        message = f"{record.msg} {args!r}"
    return escape(message, MAX_LINE_CHARS)


def _safe_value(value: object) -> object:
    """Numbers stay numbers (for %d and %.2f); anything else becomes escaped, capped text."""
    if isinstance(value, int | float):
        return value
    return escape(str(value), MAX_VALUE_CHARS)


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
    for name in ("generation", "weights", "lora_loader", "guarded_download", "predict", "__main__"):
        logging.getLogger(name).setLevel(level)
    quiet_libraries()
    _tame_warnings()


def quiet_libraries() -> None:
    """Loading bars and per-request INFO lines from libraries would bury the lines users need.

    Only libraries already imported are touched: importing diffusers here would cost setup seconds before the base
    weights are even found (predict.py). transformers takes huggingface_hub's setting when it is imported later;
    diffusers does not, so the service calls this again once it has imported it."""
    import huggingface_hub.utils as hub_utils

    hub_utils.disable_progress_bars()
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        if name in sys.modules:
            sys.modules[name].disable_progress_bar()
    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _tame_warnings() -> None:
    """Drop the library notices above; any other warning becomes one plain "Warning: ..." log line instead of
    Python's two lines with a source path and code excerpt."""
    for category, message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    warnings.showwarning = _log_warning


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logger.warning("%s", message)


@dataclass
class Elapsed:
    """A stage's duration, filled in when the stage ends."""

    seconds: float = 0.0


@contextmanager
def stage(name: str) -> Iterator[Elapsed]:
    """Log how long a stage took, so slow predictions show where the time went; yields the duration too."""
    elapsed = Elapsed()
    start = time.perf_counter()
    yield elapsed
    elapsed.seconds = time.perf_counter() - start
    logger.info("%s took %.2f s", name, elapsed.seconds)


class StageTimes:
    """One prediction's stage durations under stable keys (the names scripts and metrics read), while each
    stage still logs its time for people. A stage entered several times (once per output) adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, key: str, label: str) -> Iterator[None]:
        with stage(label) as elapsed:
            yield
        self.add(key, elapsed.seconds)

    def add(self, key: str, seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds


def step_logger(label: str, total_steps: int) -> Callable:
    """A diffusers `callback_on_step_end` that logs one line per denoising step."""
    start = time.perf_counter()

    def on_step_end(pipeline, step: int, timestep, callback_kwargs: dict) -> dict:
        elapsed = time.perf_counter() - start
        logger.info("%s step %d/%d (%.2f s)", label, step + 1, total_steps, elapsed)
        return callback_kwargs

    return on_step_end
