"""Hugging Face LoRAs through huggingface_hub: pick the file of a repo, download it, explain failures.

huggingface_hub does the HTTP (its own resume, retries, CDN redirects and typed errors); we pass
`endpoint=` and `token=` on every call because it reads HF_ENDPOINT once at import and would otherwise
fall back to a token saved on disk. Never `login()`: that is process-wide and writes the token to disk.
The file's size comes from the Hub's metadata (one HEAD) and is checked against the size limit before
any byte is downloaded; the Hub is the operator's configured endpoint, so its word on the size is taken,
and the size on disk is checked again afterwards.

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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx2  # huggingface_hub's HTTP client: its transport errors are what a network failure raises
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import tqdm as hf_tqdm

from .errors import LoraError
from .http import SizeLimit, format_size
from .sources import HuggingFaceFile
from .triggers import from_model_card

logger = logging.getLogger(__name__)

NON_LORA_MARKERS = ("optimizer", "scheduler", "checkpoint", "diffusion_pytorch_model")
PREFERRED_NAMES = ("pytorch_lora_weights.safetensors", "lora.safetensors")
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf")
_STEP_SUFFIX = re.compile(r"^(?P<stem>.+?)[_-]\d+$")
TOKENS_PAGE = "https://huggingface.co/settings/tokens"


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


def download(source: HuggingFaceFile, work: Path, *, endpoint: str, token: str | None, limit: SizeLimit) -> HfDownload:
    """Download the LoRA of `source` into `work`; LoraError for anything the user can fix."""
    token_arg: str | bool = token if token else False  # False: never a token saved on disk
    try:
        return _download(source, work, endpoint, token_arg, limit)
    except LoraError:
        raise
    except Exception as error:
        explained = explain(error, source, endpoint, token)
        if explained is None:
            raise
        raise explained from error


def _download(source: HuggingFaceFile, work: Path, endpoint: str, token: str | bool, limit: SizeLimit) -> HfDownload:
    filename, triggers = source.filename, ()
    if filename is None:
        files = HfApi(endpoint=endpoint, token=token).list_repo_files(source.repo_id, revision=source.revision)
        filename, candidates = choose_lora(files)
        if filename is None:
            name_hint = f"huggingface.co/{source.repo_id}/blob/{source.revision}/{{file}}"
            raise ambiguity_error(source.display, candidates, files, name_hint)
        logger.info("LoRA %s: using %s", source.display, filename)
        if "README.md" in files:
            triggers = _card_triggers(source, work, endpoint, token)
    what = f"LoRA {source.display} ({filename})"
    url = hf_hub_url(source.repo_id, filename, revision=source.revision, endpoint=endpoint)
    metadata = get_hf_file_metadata(url, token=token, endpoint=endpoint, retry_on_errors=True)
    if metadata.size is not None:
        limit.check(what, metadata.size)
    started = time.monotonic()
    logger.info("LoRA %s: downloading %s from %s", source.display, filename, endpoint)
    local = hf_hub_download(
        source.repo_id,
        filename,
        revision=source.revision,
        local_dir=work / "hf",
        endpoint=endpoint,
        token=token,
        tqdm_class=_SilentProgress,
    )
    path = Path(local)
    seconds = max(time.monotonic() - started, 1e-6)
    size = path.stat().st_size
    limit.check(what, size)
    logger.info(
        "LoRA %s: downloaded %s in %.1fs (%.1f MB/s)", source.display, format_size(size), seconds, size / 1e6 / seconds
    )
    return HfDownload(path, filename, triggers)


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


def explain(error: Exception, source: HuggingFaceFile, endpoint: str, token: str | None) -> LoraError | None:
    """The user-facing error for a huggingface_hub failure, or None for an internal error."""
    if isinstance(error, LocalEntryNotFoundError) and error.__cause__ is not None:
        cause = error.__cause__  # hf_hub_download wraps the failed metadata request
        error = cause if isinstance(cause, Exception) else error
    page, repo = f"https://huggingface.co/{source.repo_id}", source.repo_id
    if isinstance(error, OfflineModeIsEnabled):
        return LoraError(
            f"HF_HUB_OFFLINE is set, so {source.display} cannot be downloaded. Unset it, or give the LoRA as a "
            "local path."
        )
    if isinstance(error, GatedRepoError):
        if not token:
            return LoraError(
                f"{repo} is a gated Hugging Face repo: set HF_TOKEN to a token ({TOKENS_PAGE}) of an account that "
                f"accepted its conditions at {page}."
            )
        return LoraError(
            f"HF_TOKEN has no access to the gated repo {repo}: accept its conditions at {page} "
            "with the token's account (approval can take a while)."
        )
    if isinstance(error, RepositoryNotFoundError):
        if not token:
            return LoraError(
                f"Hugging Face repo {repo} was not found. Check the name; if it is private, set HF_TOKEN to a token "
                f"of an account that can read it ({TOKENS_PAGE})."
            )
        return LoraError(
            f"Hugging Face repo {repo} was not found, or HF_TOKEN's account cannot read it. "
            "Check the name and the token's access."
        )
    if isinstance(error, RevisionNotFoundError):
        return LoraError(f"Hugging Face repo {repo} has no revision {source.revision!r}. Check the branch or commit.")
    if isinstance(error, RemoteEntryNotFoundError):
        return LoraError(
            f"Hugging Face repo {repo} has no file {source.filename!r} at {source.revision!r}. Check the name, "
            f"or give huggingface.co/{repo} to pick the LoRA automatically."
        )
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        return _explain_status(error.response.status_code, repo, endpoint)
    if isinstance(error, httpx2.TransportError):
        return LoraError(
            f"Cannot download {source.display} from {endpoint} ({type(error).__name__}). "
            "Check the network and HF_ENDPOINT, then try again."
        )
    return None


def _explain_status(status: int, repo: str, endpoint: str) -> LoraError:
    if status == 401:
        return LoraError(
            f"The Hugging Face Hub refused HF_TOKEN (invalid or expired). Create a read token at "
            f"{TOKENS_PAGE} and set HF_TOKEN to it."
        )
    if status == 403:
        return LoraError(f"HF_TOKEN may not read {repo} (403). Use a token with read access ({TOKENS_PAGE}).")
    if status == 429 or status >= 500:
        return LoraError(f"The Hugging Face Hub at {endpoint} answered {status} for {repo}. Try again later.")
    return LoraError(f"The Hugging Face Hub at {endpoint} answered {status} for {repo}. Check HF_ENDPOINT.")
