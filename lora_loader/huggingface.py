"""Hugging Face LoRAs through huggingface_hub: pick the file of a repo, download it, explain failures.

huggingface_hub does the HTTP (its own resume, retries, CDN redirects and typed errors); its failures are
worded by `hub_errors`, as for the base weights, and end with the advice a LoRA user needs. We pass
`endpoint=` and `token=` on every call because it reads HF_ENDPOINT once at import and would otherwise
fall back to a token saved on disk. Never `login()`: that is process-wide and writes the token to disk.
The file's size comes from the Hub's metadata (one HEAD) and is checked against the size limit before
any byte is downloaded; the Hub is the operator's configured endpoint, so its word on the size is taken,
and the size on disk is checked again afterwards. The download is held to the same deadline and minimum
rate as every other (`guarded_download.Pace`), through the one hook huggingface_hub offers: its progress
bar, told of every chunk (10 MB each over HTTP, so a slow mirror is stopped at its next chunk).

Which file of a repo is the LoRA (when the user names none), in order:
1. only `*.safetensors` count, minus names with `optimizer`, `scheduler`, `checkpoint` (diffusers'
   `_best_guess_weight_name` skips those) or `diffusion_pytorch_model` (a full model's component);
2. a file named `pytorch_lora_weights.safetensors` (diffusers' trainers), else `lora.safetensors`
   (Replicate's trainer), wins; if several, the one at the top level;
3. else the only candidate; else the only one at the top level;
4. else the final save of a run: `name.safetensors` when every other candidate is `name_<step>` or
   `name-<epoch>` (ai-toolkit and kohya save numbered intermediates beside it);
5. else an error listing the candidates and how to name one.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import httpx2  # huggingface_hub's HTTP client: its transport errors are what a network failure raises
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import tqdm as hf_tqdm

import hub_errors
from guarded_download import DownloadError, Pace, SizeLimit, Stopwatch, format_size

from .errors import LoraError
from .sources import HuggingFaceFile
from .triggers import from_model_card

logger = logging.getLogger(__name__)

NON_LORA_MARKERS = ("optimizer", "scheduler", "checkpoint", "diffusion_pytorch_model")
PREFERRED_NAMES = ("pytorch_lora_weights.safetensors", "lora.safetensors")
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf")
_STEP_SUFFIX = re.compile(r"^(?P<stem>.+?)[_-]\d+$")
# The advice a LoRA user gets after the Hub's explanation, by kind; other kinds need none.
ENDINGS = {
    hub_errors.Kind.OFFLINE: ", or give the LoRA as a local path",
    hub_errors.Kind.FILE_NOT_FOUND: ", or give huggingface.co/{repo} to pick the LoRA automatically",
    hub_errors.Kind.INTERRUPTED: ". Try again",
}


@dataclass(frozen=True)
class HfDownload:
    path: Path
    filename: str
    trigger_words: tuple[str, ...]


def choose_lora(files: Iterable[str]) -> tuple[str | None, list[str]]:
    """(the LoRA among `files` by the module's rules or None, the candidates considered)."""
    candidates = sorted(f for f in files if _is_candidate(f))
    for preferred in PREFERRED_NAMES:
        named = [c for c in candidates if PurePosixPath(c).name.lower() == preferred]
        if named:
            return _single_or_top_level(named), candidates
    chosen = _single_or_top_level(candidates) or _final_save(candidates)
    return chosen, candidates


def _is_candidate(name: str) -> bool:
    lower = name.lower()
    base = PurePosixPath(lower).name
    return (
        lower.endswith(".safetensors") and not base.startswith("._") and not any(m in lower for m in NON_LORA_MARKERS)
    )


def _single_or_top_level(names: list[str]) -> str | None:
    if len(names) == 1:
        return names[0]
    top = [n for n in names if "/" not in n]
    return top[0] if len(top) == 1 else None


def _final_save(names: list[str]) -> str | None:
    stems = {n: PurePosixPath(n).name[: -len(".safetensors")] for n in names}
    plain = [n for n, stem in stems.items() if not _STEP_SUFFIX.match(stem)]
    if len(plain) != 1:
        return None
    final = stems[plain[0]]
    numbered = [m.group("stem") for n, s in stems.items() if n != plain[0] and (m := _STEP_SUFFIX.match(s))]
    return plain[0] if len(numbered) == len(names) - 1 and all(s == final for s in numbered) else None


def ambiguity_error(where: str, candidates: list[str], files: Iterable[str], how_to_name: str) -> LoraError:
    """The error for a repo or folder whose LoRA file cannot be picked; `how_to_name` formats a file name."""
    if not candidates:
        others = [f for f in files if f.lower().endswith(OTHER_WEIGHT_SUFFIXES)]
        found = f" (it has {', '.join(others[:5])}; only .safetensors LoRAs are loaded)" if others else ""
        return LoraError(f"{where} holds no .safetensors LoRA file{found}.")
    shown = ", ".join(candidates[:10]) + (f" and {len(candidates) - 10} more" if len(candidates) > 10 else "")
    return LoraError(
        f"{where} holds {len(candidates)} .safetensors files and none is clearly the LoRA: {shown}. "
        f"Name the one to use, e.g. {how_to_name.format(file=candidates[0])}"
    )


class _SilentProgress(hf_tqdm):
    """huggingface_hub's progress bar, always off: Cog logs are lines, and we log our own."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _paced(watch: Stopwatch) -> type[hf_tqdm]:
    """A silent progress bar class that reports every chunk to `watch`, which raises when it is too slow."""

    class PacedProgress(_SilentProgress):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            watch.attempt_started()
            watch.expect(kwargs.get("total"))

        def update(self, n: float | None = 1) -> bool | None:
            if n and n > 0:  # huggingface_hub rolls the count back (n < 0) when a resume starts over
                watch.arrived(int(n))
            return super().update(n)

    return PacedProgress


def download(
    source: HuggingFaceFile, work: Path, *, endpoint: str, token: str | None, limit: SizeLimit, pace: Pace
) -> HfDownload:
    """Download the LoRA of `source` into `work` within `pace`; LoraError for anything the user can fix."""
    token_arg: str | bool = token if token else False  # False: never a token saved on disk
    call = hub_errors.HubCall(source.repo_id, endpoint, token, source.display, source.revision, source.filename)
    with _explained(call):
        filename, triggers = _choose(source, work, endpoint, token_arg)
        what = f"LoRA {source.display} ({filename})"
        url = hf_hub_url(source.repo_id, filename, revision=source.revision, endpoint=endpoint)
        metadata = get_hf_file_metadata(url, token=token_arg, endpoint=endpoint, retry_on_errors=True)
        if metadata.size is not None:
            limit.check(what, metadata.size)  # before any byte is downloaded
    started = time.monotonic()
    logger.info("LoRA %s: downloading %s from %s", source.display, filename, endpoint)
    with _explained(replace(call, filename=filename, transferring=True)):
        local = hf_hub_download(
            source.repo_id,
            filename,
            revision=source.revision,
            local_dir=work / "hf",
            endpoint=endpoint,
            token=token_arg,
            tqdm_class=_paced(pace.start(what)),
        )
    path = Path(local)
    seconds = max(time.monotonic() - started, 1e-6)
    size = path.stat().st_size
    limit.check(what, size)
    logger.info(
        "LoRA %s: downloaded %s in %.1fs (%.1f MB/s)", source.display, format_size(size), seconds, size / 1e6 / seconds
    )
    return HfDownload(path, filename, triggers)


def _choose(source: HuggingFaceFile, work: Path, endpoint: str, token: str | bool) -> tuple[str, tuple[str, ...]]:
    """The file to download (the user's, or the repo's LoRA by the rules) and the model card's trigger words."""
    if source.filename is not None:
        return source.filename, ()
    files = HfApi(endpoint=endpoint, token=token).list_repo_files(source.repo_id, revision=source.revision)
    filename, candidates = choose_lora(files)
    if filename is None:
        name_hint = f"huggingface.co/{source.repo_id}/blob/{source.revision}/{{file}}"
        raise ambiguity_error(source.display, candidates, files, name_hint)
    logger.info("LoRA %s: using %s", source.display, filename)
    triggers = _card_triggers(source, work, endpoint, token) if "README.md" in files else ()
    return filename, triggers


@contextmanager
def _explained(call: hub_errors.HubCall) -> Iterator[None]:
    """huggingface_hub's failures as LoraErrors with a LoRA user's advice; anything unexplained propagates."""
    try:
        yield
    except (LoraError, DownloadError):
        raise
    except Exception as error:
        problem = hub_errors.explain(error, call)
        if problem is None:
            raise
        ending = ENDINGS.get(problem.kind, "").format(repo=call.repo_id)
        raise LoraError(problem.message(ending)) from error


def _card_triggers(source: HuggingFaceFile, work: Path, endpoint: str, token: str | bool) -> tuple[str, ...]:
    """`instance_prompt` of the model card; a card that fails to download only costs the hint."""
    try:
        card = hf_hub_download(
            source.repo_id,
            "README.md",
            revision=source.revision,
            local_dir=work / "card",
            endpoint=endpoint,
            token=token,
            tqdm_class=_SilentProgress,
        )
        return from_model_card(Path(card).read_text(encoding="utf-8", errors="replace"))
    except (HfHubHTTPError, OSError, httpx2.TransportError) as error:
        logger.info("LoRA %s: no model card read (%s)", source.display, type(error).__name__)
        return ()
