"""Session fixtures: tiny random FLUX/safety weights built offline, and services over them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from generation.service import GenerationService
from generation.settings import Settings
from lora_loader import LoraFetcher, LoraSettings
from testkit.tiny_weights import write_tiny_weights

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """WEIGHTS_DIR with all four folders; its safety models never flag anything."""
    root = tmp_path_factory.mktemp("tiny-weights")
    write_tiny_weights(root)
    return root


@pytest.fixture(scope="session")
def cpu_settings(tiny_weights, tmp_path_factory) -> Settings:
    return Settings(
        weights_dir=tiny_weights,
        device=torch.device("cpu"),
        dtype=torch.float32,
        output_dir=tmp_path_factory.mktemp("outputs"),
    )


@pytest.fixture(scope="session")
def lora_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lora-cache")


@pytest.fixture(scope="session")
def service(cpu_settings, lora_cache_dir) -> GenerationService:
    # LoRA URLs in tests point at fakes on loopback, which the default address policy refuses.
    settings = LoraSettings(cache_dir=lora_cache_dir, allow_private_urls=True)
    return GenerationService.from_settings(cpu_settings, LoraFetcher(lora_cache_dir, settings.max_bytes, settings))


@pytest.fixture(scope="session")
def tiny_env(tiny_weights, tmp_path_factory) -> dict[str, str]:
    """Environment for subprocesses (Cog server, script/predict) running on the tiny weights."""
    env = dict(os.environ)
    env.update(WEIGHTS_DIR=str(tiny_weights), FLUX_DEVICE="cpu", FLUX_DTYPE="float32", HF_HUB_OFFLINE="1")
    env.update(LORA_CACHE_DIR=str(tmp_path_factory.mktemp("server-lora-cache")), LORA_ALLOW_PRIVATE_URLS="1")
    return env
