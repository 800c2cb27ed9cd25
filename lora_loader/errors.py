"""The one exception type for LoRA problems a user can cause and fix.

Everything the user controls (the LoRA string, tokens, the cache cap, what a URL actually serves) fails
with `LoraError`, whose message says what to do. It subclasses ValueError so callers that already treat
bad input as ValueError keep working. Anything else (a bug, a full disk we did not foresee) propagates
as its own type, with its traceback.
"""

from __future__ import annotations


class LoraError(ValueError):
    """A LoRA cannot be used as given; the message says what to change."""
