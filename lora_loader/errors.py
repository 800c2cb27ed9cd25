"""The one exception type for LoRA problems a user can cause and fix.

Everything the user controls (the LoRA string, tokens, the cache cap, what a URL actually serves) fails
with `LoraError`, whose message says what to do. It subclasses ValueError so callers that already treat
bad input as ValueError keep working. Anything else (a bug, a full disk we did not foresee) propagates
as its own type, with its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class LoraError(ValueError):
    """A LoRA cannot be used as given; the message says what to change."""


@contextmanager
def prefixed(prefix: str) -> Iterator[None]:
    """Put `prefix` in front of a LoraError's message (keeping its type): a request can carry two LoRAs,
    and "this file is not a LoRA" must say which one."""
    try:
        yield
    except LoraError as error:
        raise type(error)(f"{prefix}: {error}") from error
