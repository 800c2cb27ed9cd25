"""Seeds: output i uses seed + i, so any single output can be regenerated alone with that seed."""

from __future__ import annotations

import secrets

import torch

from .errors import UserInputError

MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; keep seed + 3 in range


def resolve_seed(seed: int | None, num_outputs: int) -> int:
    """The user's seed, or a random 32-bit one when none (or a negative one, as the reference) is given."""
    if seed is None or seed < 0:
        seed = secrets.randbits(32)
    if seed + num_outputs - 1 > MAX_SEED:
        raise UserInputError(f"seed must be at most {MAX_SEED - num_outputs + 1} for {num_outputs} outputs.")
    return seed


def generator_for(seed: int, device: torch.device | str) -> torch.Generator:
    """A fresh generator on the pipeline's device; CUDA and CPU streams differ for the same seed."""
    return torch.Generator(device=device).manual_seed(seed)
