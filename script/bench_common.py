"""Pieces the benchmarks share: a loopback file server standing in for a LoRA host, LoRA files, timing."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file

RANK = 16


def write_lora(path: Path, transformer: torch.nn.Module, seed: int, rank: int = RANK) -> Path:
    """An ai-toolkit style LoRA (PEFT keys, fp16, no alpha) on every Linear of every block."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and "transformer_blocks." in name:
            a = torch.randn(rank, module.in_features, generator=generator) * 0.01
            b = torch.randn(module.out_features, rank, generator=generator) * 0.01
            tensors[f"transformer.{name}.lora_A.weight"] = a.half()
            tensors[f"transformer.{name}.lora_B.weight"] = b.half()
    save_file(tensors, path)
    return path


class static_server:
    """A loopback file server standing in for a LoRA host, so a cold load includes a real download."""

    def __init__(self, folder: Path):
        handler = partial(_QuietHandler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start
