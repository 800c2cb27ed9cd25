"""Find the base weights under WEIGHTS_DIR, or download them from the Hugging Face Hub.

A folder (see `weights.layout`) counts as present when every one of its `required_files` exists; then
nothing touches the network. Otherwise only the files matching its `allow_patterns` are fetched (never
the 23 GB single-file checkpoints at the root of the FLUX repos), one by one with `hf_hub_download`,
into `WEIGHTS_DIR/.incomplete/<name>`, and that folder is renamed into place only once every file is
complete. So an interrupted download never passes for a usable folder, and a retry picks it up: the
files that were complete are kept (huggingface_hub's local_dir metadata pins them to the commit we
resolved) and only the rest is fetched. Within one run, huggingface_hub itself retries a file whose
connection drops.

Progress goes to this module's logger at INFO, one line per event; huggingface_hub's tqdm bars are
silenced for these calls because they garble line-based logs such as Cog's.

Errors a user can fix (gated repo, refused token, unknown repo, no network, a partial folder in the
way, a full disk) are raised as `WeightsDownloadError`, with a message that says what to do. Anything
else propagates unchanged, with its traceback. The token never appears in a log line or a message.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its transport errors are what a network failure raises
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import filter_repo_objects
from huggingface_hub.utils import tqdm as hf_tqdm

from weights.layout import ALL_FOLDERS, WeightsFolder

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIR = "./model-cache"
DEFAULT_ENDPOINT = "https://huggingface.co"
PROGRESS_LINES_ABOVE_BYTES = 64 * 1024 * 1024  # smaller files get only their completion line
STAGING_DIR = ".incomplete"  # under WEIGHTS_DIR; never a folder name of the layout
HF_METADATA_DIR = ".cache"  # what hf_hub_download keeps inside a local_dir to resume and skip files
TOKENS_PAGE = "https://huggingface.co/settings/tokens"


class WeightsDownloadError(RuntimeError):
    """The base weights are missing and cannot be downloaded, for a reason the user can fix."""


def default_weights_dir() -> Path:
    """WEIGHTS_DIR, read now, or its documented default."""
    return Path(os.environ.get("WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR)


def missing_files(folder_path: Path, folder: WeightsFolder) -> list[str]:
    """The required files of `folder` that `folder_path` lacks; empty when it is usable."""
    return [name for name in folder.required_files if not (folder_path / name).is_file()]


def ensure_weights(
    weights_dir: Path | str | None = None,
    folders: Iterable[WeightsFolder] = ALL_FOLDERS,
    *,
    token: str | None = None,
    endpoint: str | None = None,
) -> dict[str, Path]:
    """Make sure every folder in `folders` is usable under `weights_dir`; return name -> folder path.

    `weights_dir` defaults to WEIGHTS_DIR, `token` to HF_TOKEN and `endpoint` to HF_ENDPOINT, all read
    at call time (huggingface_hub reads HF_ENDPOINT once, at import, so it is passed explicitly). With
    no token the requests are anonymous: a token saved by `hf auth login` is not used, as the
    configuration contract names HF_TOKEN only.
    """
    root = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    root = root.expanduser().absolute()
    token = token or os.environ.get("HF_TOKEN") or None
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    return {folder.name: _ensure_folder(root, folder, token, endpoint) for folder in folders}


def _ensure_folder(root: Path, folder: WeightsFolder, token: str | None, endpoint: str) -> Path:
    target = root / folder.name
    missing = missing_files(target, folder)
    if not missing:
        logger.info("%s: found in %s", folder.name, target)
        return target
    _check_target_replaceable(target, missing)
    download = _FolderDownload(folder, root, token, endpoint)
    try:
        return download.run()
    except WeightsDownloadError:
        raise
    except Exception as error:
        explained = _explain(error, download)
        if explained is None:
            raise
        raise explained from error


def _check_target_replaceable(target: Path, missing: list[str]) -> None:
    """Refuse to download over a partial folder someone put there: that would discard their files."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    raise WeightsDownloadError(
        f"{target} exists but is incomplete (missing {shown}). Complete it, or remove it so that it is "
        "downloaded again."
    )


@dataclass
class _RemoteFile:
    path: str
    size: int


class _FolderDownload:
    """One folder's download: list the repo, fetch into the staging folder, move it into place."""

    def __init__(self, folder: WeightsFolder, root: Path, token: str | None, endpoint: str) -> None:
        self.folder = folder
        self.root = root
        self.target = root / folder.name
        self.staging = root / STAGING_DIR / folder.name
        self.token = token
        self.endpoint = endpoint
        self.current: str | None = None  # the file being fetched, for error messages
        self.completed = 0

    def run(self) -> Path:
        started = time.monotonic()
        commit, files = self._list_files()
        total = sum(f.size for f in files)
        logger.info(
            "%s: downloading %d files (%s) from %s at %s",
            self.folder.name,
            len(files),
            format_size(total),
            self.folder.repo_id,
            self.endpoint,
        )
        self.staging.mkdir(parents=True, exist_ok=True)
        for index, file in enumerate(files, start=1):
            self._fetch(file, commit, index, len(files))
        self._install(files)
        logger.info(
            "%s: ready in %s (%s in %.1fs)",
            self.folder.name,
            self.target,
            format_size(total),
            time.monotonic() - started,
        )
        return self.target

    def _list_files(self) -> tuple[str, list[_RemoteFile]]:
        """The commit to pin every download to, and the repo files the folder needs."""
        api = HfApi(endpoint=self.endpoint, token=self._token_arg)
        info = api.model_info(self.folder.repo_id, files_metadata=True)
        if info.sha is None:
            raise RuntimeError(f"{self.endpoint} sent no commit id for {self.folder.repo_id}")
        listed = {s.rfilename: s.size or 0 for s in info.siblings or []}
        wanted = filter_repo_objects(sorted(listed), allow_patterns=list(self.folder.allow_patterns))
        files = [_RemoteFile(path, listed[path]) for path in wanted]
        absent = [name for name in self.folder.required_files if name not in listed]
        if absent:
            raise WeightsDownloadError(
                f"{self.folder.repo_id} at {self.endpoint} has no {', '.join(absent)}: it is not the "
                f"expected repo. Check HF_ENDPOINT, or put the weights in {self.manual_hint}."
            )
        return info.sha, files

    def _fetch(self, file: _RemoteFile, commit: str, index: int, count: int) -> None:
        self.current = file.path
        local = self.staging / file.path
        before = _identity(local)
        started = time.monotonic()
        hf_hub_download(
            self.folder.repo_id,
            file.path,
            revision=commit,
            local_dir=self.staging,
            token=self._token_arg,
            endpoint=self.endpoint,
            tqdm_class=_LoggedProgress,
        )
        self._check_size(local, file)
        self.completed += 1
        # huggingface_hub replaces a file it fetches, so an unchanged identity means it was reused.
        kept = before is not None and before == _identity(local)
        when = "kept from an earlier attempt" if kept else f"in {time.monotonic() - started:.1f}s"
        logger.info("%s: [%d/%d] %s (%s) %s", self.folder.name, index, count, file.path, format_size(file.size), when)

    def _check_size(self, local: Path, file: _RemoteFile) -> None:
        actual = local.stat().st_size
        if actual != file.size:
            # Deleted so that the retry fetches it again instead of trusting the pinned metadata.
            local.unlink()
            raise WeightsDownloadError(
                f"{file.path} of {self.folder.repo_id} arrived with {actual} bytes instead of {file.size}. "
                "Run again to download it again."
            )

    def _install(self, files: list[_RemoteFile]) -> None:
        """Move the complete staging folder into place, leaving no download bookkeeping in it."""
        shutil.rmtree(self.staging / HF_METADATA_DIR, ignore_errors=True)
        expected = {self.staging / f.path for f in files}
        for path in self.staging.rglob("*"):
            if path.is_file() and path not in expected:
                path.unlink()  # left by an attempt against an older commit
        try:
            os.replace(self.staging, self.target)  # replaces an empty target folder too
        except OSError:
            if missing_files(self.target, self.folder):
                raise
            shutil.rmtree(self.staging)  # another process installed it meanwhile
        _remove_if_empty(self.root / STAGING_DIR)

    @property
    def _token_arg(self) -> str | bool:
        # False, not None: None would make huggingface_hub fall back to a token saved on disk.
        return self.token if self.token is not None else False

    @property
    def manual_hint(self) -> str:
        return f"WEIGHTS_DIR/{self.folder.name} ({self.target})"


class _LoggedProgress(hf_tqdm):
    """huggingface_hub's progress bar turned into log lines, a line per tenth of a large file: Cog logs are
    lines, not a terminal, and a 10 GB shard must not look like a hang."""

    def __init__(self, *args, **kwargs) -> None:
        self._label = kwargs.get("desc") or "download"
        self._total = kwargs.get("total") or 0
        self._done = 0
        self._next_tenth = 1
        self._started = time.monotonic()
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)

    def update(self, n: float | None = 1) -> bool | None:
        self._done += n or 0
        if self._total >= PROGRESS_LINES_ABOVE_BYTES and self._done * 10 >= self._next_tenth * self._total:
            elapsed = max(time.monotonic() - self._started, 1e-6)
            logger.info(
                "  %s: %d%% (%s of %s, %.0f MB/s)",
                self._label,
                100 * self._done // self._total,
                format_size(self._done),
                format_size(self._total),
                self._done / elapsed / 1e6,
            )
            self._next_tenth = 10 * self._done // self._total + 1
        return super().update(n)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def format_size(size: int) -> str:
    """Bytes in decimal units, as the Hub shows them: 512 B, 1.2 kB, 23.8 GB."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


# -- turning library errors into messages that say what to do ----------------------------------------


def _explain(error: Exception, download: _FolderDownload) -> WeightsDownloadError | None:
    """The user-facing error for `error`, or None when it is an internal error to propagate as is."""
    cause = _root_cause(error)
    explainers = (_explain_access, _explain_hub_status, _explain_not_a_hub, _explain_network, _explain_disk)
    for explain in explainers:
        message = explain(cause, download)
        if message is not None:
            return WeightsDownloadError(_redact(message, download.token))
    return None


def _root_cause(error: Exception) -> BaseException:
    """huggingface_hub wraps a failed metadata call in LocalEntryNotFoundError: look at what failed."""
    if isinstance(error, LocalEntryNotFoundError) and error.__cause__ is not None:
        return error.__cause__
    return error


def _explain_access(error: BaseException, d: _FolderDownload) -> str | None:
    repo, name, page = d.folder.repo_id, d.folder.name, f"https://huggingface.co/{d.folder.repo_id}"
    if isinstance(error, GatedRepoError):
        if d.token is None:
            return (
                f"{name} is gated: accept the licence at {page}, then set HF_TOKEN to a read token of that "
                f"account ({TOKENS_PAGE}), or put the weights in {d.manual_hint}."
            )
        return (
            f"HF_TOKEN has no access to the gated {repo}: accept the licence at {page} with the account "
            f"the token belongs to (approval can take a while), or put the weights in {d.manual_hint}."
        )
    if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError)):
        who = "with the given HF_TOKEN" if d.token else "anonymously (a private repo needs HF_TOKEN)"
        return (
            f"{repo} was not found at {d.endpoint} {who}. Check HF_ENDPOINT and HF_TOKEN, or put the "
            f"weights in {d.manual_hint}."
        )
    return None


def _explain_hub_status(error: BaseException, d: _FolderDownload) -> str | None:
    if not isinstance(error, HfHubHTTPError) or error.response is None:
        return None
    status = error.response.status_code
    if status == 401:
        return (
            f"The Hugging Face Hub at {d.endpoint} refused HF_TOKEN (invalid or expired). Create a read "
            f"token at {TOKENS_PAGE} and set HF_TOKEN to it, or put the weights in {d.manual_hint}."
        )
    if status == 403:
        return (
            f"The Hugging Face Hub refused HF_TOKEN access to {d.folder.repo_id} (403). Use a token with "
            f"read access ({TOKENS_PAGE}), or put the weights in {d.manual_hint}."
        )
    if status == 429 or status >= 500:
        return (
            f"The Hugging Face Hub at {d.endpoint} answered {status} while downloading {d.folder.name}. "
            f"Try again later{_kept_note(d)}."
        )
    return (
        f"{d.endpoint} answered {status} for {d.folder.repo_id}, which a Hugging Face Hub would not. "
        f"Check HF_ENDPOINT, or put the weights in {d.manual_hint}."
    )


def _explain_not_a_hub(error: BaseException, d: _FolderDownload) -> str | None:
    if not isinstance(error, FileMetadataError):
        return None
    return (
        f"{d.endpoint} does not answer like a Hugging Face Hub ({_first_line(error)}). Check HF_ENDPOINT, "
        f"or put the weights in {d.manual_hint}."
    )


def _explain_network(error: BaseException, d: _FolderDownload) -> str | None:
    if isinstance(error, OfflineModeIsEnabled):
        return (
            f"HF_HUB_OFFLINE is set, so {d.folder.name} cannot be downloaded. Unset it, or put the weights "
            f"in {d.manual_hint}."
        )
    reason = f"{type(error).__name__}: {_first_line(error)}"
    interrupted = d.current is not None and (
        isinstance(error, (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.ReadTimeout))
        or (isinstance(error, OSError) and str(error).startswith("Consistency check failed"))
    )
    if interrupted:
        return (
            f"Downloading {d.folder.name} from {d.folder.repo_id} was interrupted at {d.current} ({reason})."
            f" Run again to resume{_kept_note(d)}."
        )
    if isinstance(error, httpx2.TransportError):
        return (
            f"Cannot reach the Hugging Face Hub at {d.endpoint} to download {d.folder.name} ({reason}). "
            f"Check the network and HF_ENDPOINT, or put the weights in {d.manual_hint}."
        )
    return None


def _explain_disk(error: BaseException, d: _FolderDownload) -> str | None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return f"The disk of {d.root} is full while downloading {d.folder.name}. Free some space{_kept_note(d)}."
    if isinstance(error, PermissionError):
        return (
            f"Cannot write in {d.root} ({error.strerror}). Make WEIGHTS_DIR writable, or put the weights in "
            f"{d.manual_hint}."
        )
    return None


def _kept_note(d: _FolderDownload) -> str:
    if d.completed == 0:
        return ""
    return f"; the {d.completed} files already complete are kept in {d.staging}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


def _redact(message: str, token: str | None) -> str:
    # Our messages never include the token, but library text quoted in them is not ours to vouch for.
    return message.replace(token, "***") if token else message
