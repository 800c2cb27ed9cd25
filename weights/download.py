"""Find the base weights under WEIGHTS_DIR, or download them from the Hugging Face Hub.

A folder (see `weights.layout`) counts as present when every one of its `required_files` exists; then
nothing touches the network. Otherwise the repo is listed once (`HfApi.model_info`: the commit every file
is pinned to, and each file's size), and `huggingface_hub.snapshot_download` fetches the files matching the
folder's `allow_patterns` (never the 23 GB single-file checkpoints at the root of the FLUX repos), up to
`MAX_WORKERS` at a time, into `WEIGHTS_DIR/.incomplete/<name>`. That folder is renamed into place only once
every file is there with its listed size. So an interrupted download never passes for a usable folder, and
a retry picks it up: the files that were complete are kept (huggingface_hub's local_dir metadata pins them
to the commit) and only the rest is fetched. Within one run, huggingface_hub itself resumes a file whose
connection drops.

Progress goes to this module's logger at INFO, one line per event: a line per file as it completes (or is
found complete from an earlier attempt), and for a large download its bytes by tenths. huggingface_hub's
tqdm bars become those lines (`_Progress`), because bars garble line-based logs such as Cog's.

A failure a user can fix is a `WeightsDownloadError` whose message says what to do: huggingface_hub's errors
are worded by `hub_errors` (gated repo, refused token, unknown repo, offline, no network, an interrupted
transfer, a full or read-only disk) and end with the way out here (put the weights in place yourself);
a partial folder in the way, a repo without the files the pipelines load and a file of the wrong size are
this module's own. Anything else propagates unchanged, with its traceback. The token never appears in a log
line or a message.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub._local_folder import read_download_metadata
from huggingface_hub.utils import filter_repo_objects
from huggingface_hub.utils import tqdm as hf_tqdm

import hub_errors
from guarded_download import format_size
from serverconfig import ServerConfig
from weights.layout import ALL_FOLDERS, WeightsFolder

logger = logging.getLogger(__name__)

MAX_WORKERS = 8  # files downloaded at once (huggingface_hub's default): shards of one model in parallel
PROGRESS_LINES_ABOVE_BYTES = 64 * 1024 * 1024  # smaller downloads get only their per-file lines
STAGING_DIR = ".incomplete"  # under WEIGHTS_DIR; never a folder name of the layout
HF_METADATA_DIR = ".cache"  # what huggingface_hub keeps inside a local_dir to resume and skip files


class WeightsDownloadError(RuntimeError):
    """The base weights are missing and cannot be downloaded, for a reason the user can fix."""


def missing_files(folder_path: Path, folder: WeightsFolder) -> list[str]:
    """The required files of `folder` that `folder_path` lacks; empty when it is usable."""
    return [name for name in folder.required_files if not (folder_path / name).is_file()]


def ensure_weights(config: ServerConfig, folders: Iterable[WeightsFolder] = ALL_FOLDERS) -> dict[str, Path]:
    """Make sure every folder in `folders` is usable under `config.weights_dir`; return name -> folder path.

    Downloads use `config.hf_token` and `config.hf_endpoint` (huggingface_hub reads HF_ENDPOINT once, at
    import, so it is passed explicitly). With no token the requests are anonymous: a token saved by
    `hf auth login` is not used, as the configuration contract names HF_TOKEN only.
    """
    root = config.weights_dir
    return {folder.name: _ensure_folder(root, folder, config) for folder in folders}


def _ensure_folder(root: Path, folder: WeightsFolder, config: ServerConfig) -> Path:
    target = root / folder.name
    missing = missing_files(target, folder)
    if not missing:
        logger.info("%s: found in %s", folder.name, target)
        return target
    _check_target_replaceable(target, missing)
    download = _FolderDownload(folder, root, config.hf_token, config.hf_endpoint)
    try:
        return download.run()
    except WeightsDownloadError:
        raise
    except Exception as error:
        explained = download.explain(error)
        if explained is None:
            raise
        raise explained from error


def _check_target_replaceable(target: Path, missing: list[str]) -> None:
    """Refuse to download over a partial folder someone put there: that would discard their files."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    raise WeightsDownloadError(
        f"{target} exists but is incomplete (missing {_some(missing)}). Complete it, or remove it so that it is "
        "downloaded again."
    )


@dataclass(frozen=True)
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
        self.files: list[_RemoteFile] = []
        self.commit: str | None = None  # known once listed; from then on files are on their way
        self.progress: _FileLog | None = None

    def run(self) -> Path:
        started = time.monotonic()
        self.commit, self.files = self._list_files()
        logger.info(
            "%s: downloading %d files (%s) from %s at %s",
            self.folder.name,
            len(self.files),
            format_size(sum(f.size for f in self.files)),
            self.folder.repo_id,
            self.endpoint,
        )
        self.staging.mkdir(parents=True, exist_ok=True)
        self.progress = _FileLog(self.folder.name, self.staging, self.files, self._kept())
        snapshot_download(
            self.folder.repo_id,
            revision=self.commit,  # a commit: no second listing of refs, and every file of one snapshot
            allow_patterns=list(self.folder.allow_patterns),
            local_dir=self.staging,
            token=self._token_arg,
            endpoint=self.endpoint,
            max_workers=MAX_WORKERS,
            tqdm_class=self.progress.tqdm_class(),
        )
        self.progress.log_completed()
        self._check_complete()
        self._install()
        total = sum(f.size for f in self.files)
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
        absent = [name for name in self.folder.required_files if name not in listed]
        if absent:
            raise WeightsDownloadError(
                f"{self.folder.repo_id} at {self.endpoint} has no {', '.join(absent)}: it is not the "
                f"expected repo. Check HF_ENDPOINT, or put the weights in {self.manual_hint}."
            )
        return info.sha, [_RemoteFile(path, listed[path]) for path in wanted]

    def _kept(self) -> set[str]:
        """Files a previous attempt completed at this commit: huggingface_hub will not fetch them again."""
        kept = set()
        for file in self.files:
            metadata = read_download_metadata(self.staging, file.path)
            if metadata is not None and metadata.commit_hash == self.commit and (self.staging / file.path).is_file():
                kept.add(file.path)
        return kept

    def _check_complete(self) -> None:
        """Every file there with its listed size; a wrong one is deleted so that the next run fetches it."""
        absent = [f.path for f in self.files if not (self.staging / f.path).is_file()]
        if absent:  # snapshot_download returns a partial local_dir when it could not list the repo again
            raise WeightsDownloadError(
                f"{self.endpoint} did not serve {_some(absent)} of {self.folder.repo_id}. Run again to "
                f"resume{self._kept_note()}."
            )
        for file in self.files:
            local = self.staging / file.path
            actual = local.stat().st_size
            if actual != file.size:
                local.unlink()
                raise WeightsDownloadError(
                    f"{file.path} of {self.folder.repo_id} arrived with {actual} bytes instead of {file.size}. "
                    "Run again to download it again."
                )

    def _install(self) -> None:
        """Move the complete staging folder into place, leaving no download bookkeeping in it."""
        shutil.rmtree(self.staging / HF_METADATA_DIR, ignore_errors=True)
        expected = {self.staging / f.path for f in self.files}
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

    # -- errors ------------------------------------------------------------------------------------

    def explain(self, error: Exception) -> WeightsDownloadError | None:
        """The user-facing error for `error`, or None when it is an internal error to propagate as is."""
        incomplete = self.progress.incomplete() if self.progress else []
        call = hub_errors.HubCall(
            repo_id=self.folder.repo_id,
            endpoint=self.endpoint,
            token=self.token,
            subject=self.folder.name,
            revision=self.commit or "main",
            filename=_some(incomplete) if incomplete else None,
            transferring=self.commit is not None,
            folder=self.root,
        )
        problem = hub_errors.explain(error, call)
        if problem is None:
            return None
        return WeightsDownloadError(problem.message(self._ending(problem.kind)))

    def _ending(self, kind: hub_errors.Kind) -> str:
        """The advice after the Hub's explanation: resume, or do without the download."""
        if kind in (hub_errors.Kind.UNAVAILABLE, hub_errors.Kind.DISK_FULL):
            return self._kept_note()
        if kind is hub_errors.Kind.INTERRUPTED:
            return f". Run again to resume{self._kept_note()}"
        if kind is hub_errors.Kind.NOT_WRITABLE:
            return f". Make WEIGHTS_DIR writable, or put the weights in {self.manual_hint}"
        return f", or put the weights in {self.manual_hint}"

    def _kept_note(self) -> str:
        done = self.progress.completed() if self.progress else 0
        return f"; the {done} files already complete are kept in {self.staging}" if done else ""

    @property
    def _token_arg(self) -> str | bool:
        # False, not None: None would make huggingface_hub fall back to a token saved on disk.
        return self.token if self.token is not None else False

    @property
    def manual_hint(self) -> str:
        return f"WEIGHTS_DIR/{self.folder.name} ({self.target})"


class _FileLog:
    """Which files of a folder's download are complete, logged as they complete.

    huggingface_hub moves each file into the staging folder only once it is whole, so a file whose identity
    (inode, mtime) changed since the start is complete; files an earlier attempt completed keep theirs.
    """

    def __init__(self, name: str, staging: Path, files: list[_RemoteFile], kept: set[str]) -> None:
        self.name, self.staging, self.files = name, staging, files
        self.before = {f.path: _identity(staging / f.path) for f in files}
        self.kept = kept
        self.logged: set[str] = set()
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.fetched_bytes = sum(f.size for f in files if f.path not in kept)

    def tqdm_class(self) -> type[_Progress]:
        """A tqdm class for snapshot_download whose bars report to this log."""
        return type("_FolderProgress", (_Progress,), {"log": self})

    def log_completed(self) -> None:
        """A line for each file complete now and not yet logged, in the repo's order."""
        with self.lock:
            for file in self.files:
                if file.path in self.logged or not self._is_complete(file.path):
                    continue
                self.logged.add(file.path)
                kept = file.path in self.kept
                when = "kept from an earlier attempt" if kept else f"after {time.monotonic() - self.started:.1f}s"
                logger.info(
                    "%s: [%d/%d] %s (%s) %s",
                    self.name,
                    len(self.logged),
                    len(self.files),
                    file.path,
                    format_size(file.size),
                    when,
                )

    def completed(self) -> int:
        return sum(self._is_complete(f.path) for f in self.files)

    def incomplete(self) -> list[str]:
        return [f.path for f in self.files if not self._is_complete(f.path)]

    def _is_complete(self, path: str) -> bool:
        if path in self.kept:
            return True
        now = _identity(self.staging / path)
        return now is not None and now != self.before[path]


class _Progress(hf_tqdm):
    """huggingface_hub's progress bars for one snapshot_download, as log lines: the files bar ("Fetching N
    files", advanced as each file completes) logs the files that completed, and the bytes bar (named
    "huggingface_hub.snapshot_download", fed by every file's download) logs tenths of a large download. The
    bars themselves stay off: Cog logs are lines, not a terminal, and a 10 GB shard must not look like a hang.
    """

    log: _FileLog  # set by _FileLog.tqdm_class

    def __init__(self, *args, **kwargs) -> None:
        self._role = _role(kwargs.get("name"), kwargs.get("desc"))
        self._done = 0
        self._next_tenth = 1
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)

    def update(self, n: float | None = 1) -> bool | None:
        if self._role == "files":
            self.log.log_completed()
        elif self._role == "bytes":
            self._bytes(int(n or 0))
        return super().update(n)

    def _bytes(self, n: int) -> None:
        log = self.log
        total = log.fetched_bytes
        with log.lock:
            self._done += n
            if total < PROGRESS_LINES_ABOVE_BYTES or self._done * 10 < self._next_tenth * total:
                return
            done = min(self._done, total)  # a file fetched again (an older commit's) can pass the total
            elapsed = max(time.monotonic() - log.started, 1e-6)
            logger.info(
                "  %s: %d%% (%s of %s, %.0f MB/s)",
                log.name,
                100 * done // total,
                format_size(done),
                format_size(total),
                self._done / elapsed / 1e6,
            )
            self._next_tenth = 10 * done // total + 1


def _role(name: str | None, desc: str | None) -> str:
    """Which of snapshot_download's bars this is: "files", "bytes", or one to ignore (Xet's transfer bar)."""
    if name == "huggingface_hub.snapshot_download":
        return "bytes"
    if name is None and (desc or "").startswith("Fetching"):
        return "files"
    return "ignore"


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


def _some(names: list[str]) -> str:
    """Up to three names, and how many more."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
