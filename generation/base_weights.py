"""Setup's first stage: the base weights found, or downloaded, before anything heavy is imported.

It imports neither torch's compiler nor diffusers, transformers or peft (seconds of imports), so predict.py runs it
first: a missing, gated or misconfigured model fails setup in about a second instead of after those imports, and
the time it took is still setup's `weights_find` stage.
"""

from __future__ import annotations

from pathlib import Path

from serverconfig import ServerConfig
from weights.download import ensure_weights

from .logs import StageTimes


def find_base_weights(config: ServerConfig, times: StageTimes) -> dict[str, Path]:
    """Every base-weights folder by name (FLUX.1 dev and schnell, the safety models), timed as `weights_find`."""
    with times.stage("weights_find", "Finding base weights"):
        return ensure_weights(config)
