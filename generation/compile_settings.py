"""Everything the server decides about torch.compile, in one place: whether to compile, where compiled artifacts
are cached on disk, and the inductor options compilation runs with.

Setup calls these in this order, before anything is compiled (docs/DESIGN.md, "Speed"):

    enabled, why = compile_enabled(config, device)          # FLUX_COMPILE: auto | on | off
    cache = configure_compile_cache(config.compile_cache_dir)  # FLUX_COMPILE_CACHE_DIR
    loaded = load_cache_artifacts(config.compile_cache_dir)  # the mega-cache file of an earlier run, if any
    settings = choose_inductor_settings()                    # explicit autotuning choices, returned for the log
    ... quantize_ (torchao changes inductor's settings) ...
    drift = reassert_inductor_settings()                     # put ours back; `drift` says what torchao changed
    ... compile_repeated_blocks, warm-up (this is when inductor really compiles) ...
    saved = save_cache_artifacts(config.compile_cache_dir)   # after warm-up: everything this run compiled or hit

When each setting is read (torch 2.13 source):
- TORCHINDUCTOR_CACHE_DIR: `torch._inductor.runtime.cache_dir_utils.cache_dir()` reads the variable on every
  call (FX graph, AOTAutograd, autotune and kernel caches all live under it) and writes its absolute form back.
  Compile workers get the variable with every task, so a change reaches them too. One exception: precompiled
  C++ headers (`codecache._HEADER_DIR`) stay under the default folder, fixed at import.
- TRITON_CACHE_DIR: when unset, inductor sets it to `<inductor cache>/triton/<device>` the first time it builds a
  Triton kernel and never moves it again, so it is set here explicitly, before the first compile.
- fx_graph_cache / AOTAutograd cache: config values read at compile time; TORCHINDUCTOR_FX_GRAPH_CACHE and
  TORCHINDUCTOR_AUTOGRAD_CACHE in the environment win over any assignment (torch's "force" variables), and
  TORCHINDUCTOR_FORCE_DISABLE_CACHES turns every cache off; what really applies is read back and returned.
- Inductor's tuning options are read when a graph is compiled, which for `compile_repeated_blocks` is the first
  call (warm-up), not the `compile` call; they are also part of the FX graph cache key, so settings that differ
  between runs (torchao flipping them or not) mean cache misses. Choosing them explicitly keeps them equal.

The mega-cache (`torch.compiler.save_cache_artifacts` / `load_cache_artifacts`) is the portable form of those
caches: one file that can be copied to another machine or baked into an image. Loading it writes its entries
into the inductor cache folder, so it must come after `configure_compile_cache`. It holds inductor's and
AOTAutograd's compiled graphs (with their Triton kernels bundled), autotuning results and dynamic-shape profiles;
Dynamo still traces the model again on a restart (seconds), but nothing is compiled again when nothing changed.
Entries are keyed by torch version, GPU and code, so a stale file is harmless: its entries are never hit.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
MEGA_CACHE_FILE = "torch-compile-artifacts.bin"
INDUCTOR_FOLDER = "inductor"  # TORCHINDUCTOR_CACHE_DIR: FX graph, AOTAutograd, autotune and kernel caches
TRITON_FOLDER = "triton"  # TRITON_CACHE_DIR: compiled Triton kernels


def compile_enabled(config_or_value: Any, device: torch.device | str) -> tuple[bool, str]:
    """Whether the transformers are compiled on `device`, and why (for the setup log). `config_or_value` is the
    ServerConfig or FLUX_COMPILE's value (auto, on, off)."""
    mode = getattr(config_or_value, "compile", config_or_value)
    if mode not in COMPILE_MODES:
        raise ValueError(f"FLUX_COMPILE must be one of {', '.join(COMPILE_MODES)}, not {mode!r}")
    device = torch.device(device)
    if mode == "on":
        return True, f"FLUX_COMPILE=on: compiled on {device}"
    if mode == "off":
        return False, "FLUX_COMPILE=off: not compiled"
    if device.type == "cuda":
        return True, f"FLUX_COMPILE=auto: compiled on {device}"
    # gpu-plan.md, "What the CPU runs showed": a reduced FLUX (width 768, 19+38 blocks) at 256² took 279 s for its
    # first compiled call on a CPU, and each recompile about two minutes; the real model would take longer still.
    return False, f"FLUX_COMPILE=auto: not compiled on {device} (compiling FLUX on a {device.type} takes minutes)"


@dataclass(frozen=True)
class CompileCache:
    """Where compiled artifacts go, and which caches really apply (read back after setting them)."""

    folder: Path
    inductor_dir: Path
    triton_dir: Path
    fx_graph_cache: bool
    autograd_cache: bool
    autotune_local_cache: bool
    bundle_triton_into_fx_graph_cache: bool
    caches_force_disabled: bool  # TORCHINDUCTOR_FORCE_DISABLE_CACHES: nothing is cached whatever the rest says

    @property
    def effective(self) -> bool:
        return self.fx_graph_cache and self.autograd_cache and not self.caches_force_disabled


def configure_compile_cache(folder: Path | str) -> CompileCache:
    """Point inductor's and Triton's on-disk caches into `folder` and switch the local caches on explicitly.
    Call before the first compile (TRITON_CACHE_DIR is fixed by inductor at its first Triton kernel otherwise)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    folder = Path(folder).expanduser().absolute()
    inductor_dir, triton_dir = folder / INDUCTOR_FOLDER, folder / TRITON_FOLDER
    for path in (inductor_dir, triton_dir):
        path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_dir)
    os.environ["TRITON_CACHE_DIR"] = str(triton_dir)
    inductor_config.fx_graph_cache = True  # compiled graphs on disk: a restart loads instead of compiling
    functorch_config.enable_autograd_cache = True  # AOTAutograd's graphs too: a hit skips its tracing as well
    inductor_config.autotune_local_cache = True  # chosen kernel configs, so a restart does not benchmark again
    # Compiled Triton kernels travel inside the FX cache entries (and so inside the mega-cache file): a restart
    # on another machine does not rebuild them.
    inductor_config.bundle_triton_into_fx_graph_cache = True
    cache = CompileCache(
        folder=folder,
        inductor_dir=inductor_dir,
        triton_dir=triton_dir,
        fx_graph_cache=bool(inductor_config.fx_graph_cache),
        autograd_cache=bool(functorch_config.enable_autograd_cache),
        autotune_local_cache=bool(inductor_config.autotune_local_cache),
        bundle_triton_into_fx_graph_cache=bool(inductor_config.bundle_triton_into_fx_graph_cache),
        caches_force_disabled=bool(torch.compiler.config.force_disable_caches),
    )
    if not cache.effective:
        logger.warning("Compile cache: the environment turns torch's compile caches off; every start recompiles")
    return cache


@dataclass(frozen=True)
class CacheArtifacts:
    """What load_cache_artifacts / save_cache_artifacts did, as data for the log and the setup timings."""

    path: Path
    status: str  # loaded, saved, missing (no file yet), nothing (nothing compiled to save), unreadable
    bytes: int = 0
    seconds: float = 0.0
    artifacts: dict[str, int] = field(default_factory=dict)  # kind (inductor, aot_autograd, autotune...) -> count

    def log_line(self) -> str:
        counts = ", ".join(f"{count} {kind}" for kind, count in self.artifacts.items()) or "no entries"
        size = f"{self.bytes / 1e6:.1f} MB" if self.bytes else "0 bytes"
        return f"Compile cache {self.status}: {self.path} ({size}, {counts}) in {self.seconds:.2f} s"


def load_cache_artifacts(folder: Path | str) -> CacheArtifacts:
    """Load the mega-cache file an earlier run saved in `folder` into torch's caches. A missing file is the
    first start; an unreadable one (torch refuses it) is logged and ignored: the server compiles as if cold."""
    path = Path(folder).expanduser().absolute() / MEGA_CACHE_FILE
    started = time.perf_counter()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return CacheArtifacts(path, "missing")
    info = torch.compiler.load_cache_artifacts(data)  # None when torch cannot read it (it logs why)
    seconds = time.perf_counter() - started
    if info is None:
        logger.warning("Compile cache: %s could not be read; compiling from scratch", path)
        return CacheArtifacts(path, "unreadable", len(data), seconds)
    return CacheArtifacts(path, "loaded", len(data), seconds, _counts(info))


def save_cache_artifacts(folder: Path | str) -> CacheArtifacts:
    """Write every artifact this process compiled or loaded from a cache to the mega-cache file in `folder`,
    atomically (a temporary file, then os.replace): a crash or a second server never leaves half a file."""
    path = Path(folder).expanduser().absolute() / MEGA_CACHE_FILE
    started = time.perf_counter()
    saved = torch.compiler.save_cache_artifacts()  # None: nothing was compiled in this process
    if saved is None:
        return CacheArtifacts(path, "nothing", seconds=time.perf_counter() - started)
    data, info = saved
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return CacheArtifacts(path, "saved", len(data), time.perf_counter() - started, _counts(info))


def _counts(info: Any) -> dict[str, int]:
    return {kind: len(keys) for kind, keys in info.artifacts.items() if keys}


# Inductor options the server relies on, set explicitly (they are process-wide and read at compile time).
def _inductor_choices(coordinate_descent_tuning: bool) -> dict[str, Any]:
    return {
        # Benchmarks block sizes around each Triton kernel's heuristic pick at compile time. FLUX's time goes to
        # matmuls (cuBLAS / torch._scaled_mm, untouched by it) and attention; it tunes only the fused pointwise
        # and reduction kernels around them, for the first shape it sees under dynamic shapes, and costs
        # compile time on every cold start. torchao's quantize_ turns it on for the whole process; off unless the
        # caller measured that it pays (its results are kept in the autotune cache, so only cold starts pay).
        "coordinate_descent_tuning": coordinate_descent_tuning,
        # torchao sets this with the above: search every direction, not only the promising ones (slower still).
        "coordinate_descent_check_all_directions": False,
        # max-autotune benchmarks Triton / CUTLASS GEMM templates against cuBLAS for every matmul shape: minutes
        # of cold start per graph, and with dynamic shapes the pick is made for one size only. Off.
        "max_autotune": False,
        "max_autotune_gemm": False,
        "max_autotune_pointwise": False,
        # torchao sets this for int8 matmuls (int_mm followed by a scale); there are none here (bf16 and fp8).
        # Its default, stated, so the FX cache key is the same whether torchao ran or not.
        "force_fuse_int_mm_with_mul": False,
        # Freezing folds weights into the compiled graph as constants; LoRA hotswap changes slot weights in place
        # after compiling, so they must stay parameters the graph reads.
        "freezing": False,
        # CUDA graphs (mode="reduce-overhead") record one graph per input shape: 22 sizes x 2 models of memory,
        # and a replay reads the buffers of the recording. Not used; the default, stated.
        "triton.cudagraphs": False,
        # Kernel names that say what they compute (readable profiles); torch's default, which torchao also sets.
        "triton.unique_kernel_names": True,
    }


_chosen: dict[str, Any] | None = None


def choose_inductor_settings(*, coordinate_descent_tuning: bool = False) -> dict[str, Any]:
    """Set the inductor options above and return them as they now are (for the setup log). Idempotent: call it
    again, or `reassert_inductor_settings`, after anything that changes them (torchao's quantize_)."""
    global _chosen
    _chosen = _inductor_choices(coordinate_descent_tuning)
    for name, value in _chosen.items():
        _set(name, value)
    return {name: _get(name) for name in _chosen}


def reassert_inductor_settings() -> dict[str, tuple[Any, Any]]:
    """Put back the options choose_inductor_settings chose (its defaults if it was never called); returns what
    had changed since, as {option: (found, chosen)}, for a log line (empty: nothing had)."""
    chosen = _chosen if _chosen is not None else _inductor_choices(coordinate_descent_tuning=False)
    drift = {name: (_get(name), value) for name, value in chosen.items() if _get(name) != value}
    choose_inductor_settings(coordinate_descent_tuning=chosen["coordinate_descent_tuning"])
    if drift:
        changes = ", ".join(f"{name} {found} -> {value}" for name, (found, value) in drift.items())
        logger.info("Inductor settings restored after another library changed them: %s", changes)
    return drift


def _get(name: str) -> Any:
    import torch._inductor.config as inductor_config

    owner, attribute = _owner(inductor_config, name)
    return getattr(owner, attribute)


def _set(name: str, value: Any) -> None:
    import torch._inductor.config as inductor_config

    owner, attribute = _owner(inductor_config, name)
    setattr(owner, attribute, value)


def _owner(root: Any, name: str) -> tuple[Any, str]:
    *parents, attribute = name.split(".")
    for parent in parents:
        root = getattr(root, parent)
    return root, attribute
