"""LoRA string -> a validated .safetensors file on local disk, cached: the package's front door.

`LoraFetcher.fetch(source)` parses the string (`sources`), looks in the cache (`cache`) and, on a miss,
takes the entry's lock, looks again, and fetches by kind: Replicate `_weights` tars, Hugging Face via
huggingface_hub, CivitAI through its API, any URL, data: URIs. The bytes land in the entry's work
folder; a tar gives up its one .safetensors (`archives`); the file is validated (`validate`), hashed,
its trigger words collected (`triggers`), and committed as a cache entry. Local files are validated in
place and not copied, and only from the folders LORA_LOCAL_DIRS names: the LoRA string comes from whoever
sends the prediction, and a path is a way to read the server's own files.

Downloads go through `guarded_download` (address policy, pinned connections, resume, retries, a deadline
and a minimum rate), configured from the `ServerConfig` the fetcher is given; its errors reach the user as
LoraErrors, worded by each site where a status needs explaining, with the operator's advice from
`serverconfig.downloads` otherwise.
Limits: every file is held to the tighter of LORA_MAX_FILE_BYTES and LORA_CACHE_MAX_BYTES, from the
announced size before downloading and from the bytes while downloading (`guarded_download.SizeLimit`), for
data: URIs and tar members too. A full disk is a LoraError that says so; the entry's work folder is removed
with whatever part was written.

Cache keys: `<kind>-<hash>` of the source's normalized identity, the endpoint it resolves against, and
the token scope (a short hash of the token sent, or "anonymous"), so a file fetched with a token is
never served to a process without that token, while anonymous entries (public files) serve everyone.
A URL's `user:password@` is such a token (`_token_for`): `http://alice:SECRET@host/x.safetensors` is cached
for that userinfo only, and never served to `http://host/x.safetensors` or `http://mallory:guess@host/…`.
A hit makes no network request at all, even for "latest" sources (a repo's main branch, a CivitAI
model's newest version): clear the entry to pick up a newer upload.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

from guarded_download import (
    AddressPolicy,
    DownloadError,
    HTTPStatusError,
    RetryPolicy,
    SizeLimit,
    bearer,
    download,
    format_size,
    make_client,
)
from serverconfig import ServerConfig
from serverconfig.downloads import address_policy, pace, timeouts, with_advice

from . import civitai, huggingface
from .archives import extract_lora, is_tar
from .cache import CacheEntry, LoraCache
from .errors import LoraError
from .limits import cache_limit, file_limit
from .sources import (
    CivitaiModel,
    CivitaiVersion,
    DataUri,
    HttpFile,
    HuggingFaceFile,
    LocalPath,
    ReplicateModel,
    Source,
    parse_source,
)
from .triggers import from_metadata, from_trainer_config, merge
from .validate import check_safetensors

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
SUBJECT = "a LoRA"  # how the address policy's refusals name what was downloaded


@dataclass(frozen=True)
class LoraFile:
    path: Path  # a validated .safetensors file inside the cache (or the local file itself)
    source: str  # the user's string with secrets removed, for logs
    key: str  # stable identity (cache key, or content hash for local files); adapters are named by it
    sha256: str
    size: int
    trigger_words: tuple[str, ...]


@dataclass
class _Fetched:
    """What a kind-specific fetch left in the work folder, before the common checks."""

    payload: Path
    archive_allowed: bool  # a tar is unpacked; otherwise a tar is an error like any non-safetensors file
    trigger_words: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)


class LoraFetcher:
    """Fetches LoRAs as `config` says: its cache, limits, tokens, endpoints and download settings.

    `retry` and `policy` replace the downloader's defaults (tests use short backoffs and trusted networks).
    """

    def __init__(
        self, config: ServerConfig, *, retry: RetryPolicy | None = None, policy: AddressPolicy | None = None
    ) -> None:
        self.config = config
        self.cache = LoraCache(
            config.lora_cache_dir, config.lora_cache_max_bytes, in_use_seconds=config.lora_cache_in_use_seconds
        )
        self.retry = retry or RetryPolicy()
        self.policy = policy or address_policy(config, SUBJECT)
        self.timeouts = timeouts(config)
        self.pace = pace(config)
        self.limit = SizeLimit.tightest(
            cache_limit(config.lora_cache_max_bytes), file_limit(config.lora_max_file_bytes)
        )
        self._local_hashes: dict[tuple[str, int, int], str] = {}

    def fetch(self, source: str) -> LoraFile:
        """The validated LoRA file `source` names; LoraError with advice when it cannot be had."""
        src = parse_source(source)  # its errors show the string without its secrets already
        try:
            return self._fetch(src)
        except DownloadError as error:  # the downloader's words (a site's statuses were worded already)
            raise LoraError(self._redact(with_advice(error), src)) from error
        except LoraError as error:
            redacted = self._redact(str(error), src)
            if redacted != str(error):
                raise LoraError(redacted) from error.__cause__
            raise

    # -- flow ------------------------------------------------------------------------------------

    def _fetch(self, src: Source) -> LoraFile:
        logger.info("LoRA %s: resolving", src.display)
        if isinstance(src, LocalPath):
            local = self._local_file(src)
            if not is_tar(local):
                return self._local_lora(src, local)
            src = LocalPath(local)  # a local tar is unpacked into the cache like a downloaded one
        scope = self._token_scope(src)
        key = self._key(src, scope)
        for candidate in (key, self._key(src, ANONYMOUS)) if scope != ANONYMOUS else (key,):
            entry = self.cache.lookup(candidate)
            if entry is not None:
                logger.info("LoRA %s: cache hit (%s, %s)", src.display, format_size(entry.size), entry.key)
                return _lora_file(entry)
        try:
            with self.cache.writing(key, src.display) as work:
                entry = self.cache.lookup(key)
                if entry is not None:
                    logger.info("LoRA %s: fetched meanwhile by another caller (%s)", src.display, entry.key)
                    return _lora_file(entry)
                fetched = self._fetch_kind(src, work)
                entry = self._finish(src, key, scope, fetched, work)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise LoraError(
                f"The disk holding the LoRA cache ({self.cache.root}) is full, so {src.display} could not be "
                "stored; nothing partial was kept. Free space there, or set LORA_CACHE_MAX_BYTES to what the "
                "disk can hold so that older LoRAs are evicted first."
            ) from error
        logger.info(
            "LoRA %s: ready (%s, sha256 %s, trigger words: %s)",
            src.display,
            format_size(entry.size),
            entry.sha256[:12],
            ", ".join(entry.trigger_words) or "none found",
        )
        return _lora_file(entry)

    def _fetch_kind(self, src: Source, work: Path) -> _Fetched:
        if isinstance(src, HuggingFaceFile):
            return self._fetch_hf(src, work)
        if isinstance(src, DataUri):
            self.limit.check(f"LoRA {src.display}", len(src.payload))
            payload = work / "payload"
            payload.write_bytes(src.payload)
            return _Fetched(payload, archive_allowed=True)
        if isinstance(src, LocalPath):
            return _Fetched(src.path, archive_allowed=True)
        with make_client(self.policy, self.timeouts) as client:
            if isinstance(src, ReplicateModel):
                return self._fetch_replicate(client, src, work)
            if isinstance(src, (CivitaiModel, CivitaiVersion)):
                return self._fetch_civitai(client, src, work)
            return self._fetch_url(client, src, work)

    def _finish(self, src: Source, key: str, scope: str, fetched: _Fetched, work: Path) -> CacheEntry:
        lora = work / "lora.safetensors"
        triggers = fetched.trigger_words
        if fetched.archive_allowed and is_tar(fetched.payload):
            unpacked = extract_lora(fetched.payload, lora, self.limit, src.display)
            logger.info("LoRA %s: using %s from the tar", src.display, unpacked.member)
            triggers = merge(from_trainer_config(unpacked.config_text or ""), triggers)
        else:
            os.replace(fetched.payload, lora)  # always in `work`: only a local tar lives elsewhere
        info = check_safetensors(lora, src.display)
        sidecar = {
            "source": src.display,
            "kind": src.kind,
            "sha256": _sha256(lora),
            "trigger_words": list(merge(triggers, from_metadata(info.metadata))),
            "authenticated": scope != ANONYMOUS,
            **{k: v for k, v in fetched.details.items() if v is not None},
        }
        return self.cache.commit(key, lora, sidecar)

    # -- kinds -----------------------------------------------------------------------------------

    def _fetch_replicate(self, client: httpx2.Client, src: ReplicateModel, work: Path) -> _Fetched:
        token = self.config.replicate_token
        url = src.weights_url(self.config.replicate_base_url)
        try:
            payload = self._download(client, url, work, src.display, bearer(token))
        except HTTPStatusError as error:
            raise _replicate_error(error, src, token, self.config.replicate_base_url) from None
        return _Fetched(payload, archive_allowed=True)

    def _fetch_civitai(self, client: httpx2.Client, src: CivitaiModel | CivitaiVersion, work: Path) -> _Fetched:
        token, base = self._token_for(src), self.config.civitai_base_url
        resolve = civitai.resolve_model if isinstance(src, CivitaiModel) else civitai.resolve_version
        target = resolve(client, src, base, token, self.retry, self.pace)
        try:
            payload = self._download(client, target.url, work, src.display, bearer(token))
        except HTTPStatusError as error:
            raise civitai.explain_status(error, CivitaiVersion(target.version_id, token=src.token), token) from None
        return _Fetched(payload, False, target.trigger_words, target.details)

    def _fetch_url(self, client: httpx2.Client, src: HttpFile, work: Path) -> _Fetched:
        try:
            payload = self._download(client, src.url, work, src.display, {})
        except HTTPStatusError as error:
            raise _url_error(error, src) from None
        return _Fetched(payload, archive_allowed=src.archive)

    def _fetch_hf(self, src: HuggingFaceFile, work: Path) -> _Fetched:
        config = self.config
        got = huggingface.download(
            src, work, endpoint=config.hf_endpoint, token=config.hf_token, limit=self.limit, pace=self.pace
        )
        return _Fetched(got.path, False, got.trigger_words, {"hf_file": got.filename})

    def _download(self, client: httpx2.Client, url: str, work: Path, what: str, headers: dict[str, str]) -> Path:
        dest = work / "download.part"
        what = f"LoRA {what}"
        download(client, url, dest, headers=headers, what=what, limit=self.limit, retry=self.retry, pace=self.pace)
        return dest

    # -- local files -----------------------------------------------------------------------------

    def _local_file(self, src: LocalPath) -> Path:
        path = self._allowed_local(src.path.expanduser().absolute(), src.display)
        if path.is_dir():
            files = [p.relative_to(path).as_posix() for p in sorted(path.rglob("*")) if p.is_file()]
            chosen, candidates = huggingface.choose_lora(files)
            if chosen is None:
                raise huggingface.ambiguity_error(f"The folder {path}", candidates, files, f"{path}/{{file}}")
            return self._allowed_local(path / chosen, src.display)  # a link in the folder may lead out
        if not path.is_file():
            raise LoraError(f"There is no file or folder at {path}. Check the path (relative paths start with ./).")
        return path

    def _allowed_local(self, path: Path, shown: str) -> Path:
        """`path` with links resolved, if it lies in a LORA_LOCAL_DIRS folder; checked before anything is
        read, so a refused path says nothing about what exists there."""
        folders = self.config.lora_local_dirs
        if not folders:
            raise LoraError(
                f"Local LoRA paths ({shown}) are not allowed on this server. Use a URL, a Hugging Face, CivitAI or "
                "Replicate name, or a data: URI; an operator can allow local folders with "
                f"LORA_LOCAL_DIRS=/path/to/loras (several separated by {os.pathsep!r})."
            )
        real = path.resolve()
        if not any(real.is_relative_to(folder) for folder in folders):
            raise LoraError(
                f"{shown} is outside the folders LORA_LOCAL_DIRS allows LoRAs to be read from. Put the LoRA in "
                "one of them, or use a URL."
            )
        return real

    def _local_lora(self, src: LocalPath, path: Path) -> LoraFile:
        info = check_safetensors(path, str(path))
        stat = path.stat()
        memo = (str(path), stat.st_size, stat.st_mtime_ns)
        if memo not in self._local_hashes:
            self._local_hashes[memo] = _sha256(path)
        sha = self._local_hashes[memo]
        return LoraFile(path, src.display, f"local-{sha[:24]}", sha, stat.st_size, from_metadata(info.metadata))

    # -- keys and secrets --------------------------------------------------------------------------

    def _token_for(self, src: Source) -> str | None:
        """The token a fetch of `src` sends: a URL's own `user:password@`, a CivitAI link's own `?token=`, else
        the site's variable."""
        if isinstance(src, HttpFile):
            return src.credentials
        if isinstance(src, CivitaiModel | CivitaiVersion) and src.token:
            return src.token
        return {
            ReplicateModel: self.config.replicate_token,
            HuggingFaceFile: self.config.hf_token,
            CivitaiModel: self.config.civitai_token,
            CivitaiVersion: self.config.civitai_token,
        }.get(type(src))

    def _token_scope(self, src: Source) -> str:
        token = self._token_for(src)
        return f"token-{hashlib.sha256(token.encode()).hexdigest()[:16]}" if token else ANONYMOUS

    def _key(self, src: Source, scope: str) -> str:
        endpoint = {
            "replicate": self.config.replicate_base_url,
            "hf": self.config.hf_endpoint,
            "civitai": self.config.civitai_base_url,
        }.get(src.kind, "")
        identity = src.identity
        if isinstance(src, LocalPath):  # a changed file is a new entry
            stat = src.path.stat()
            identity = f"{identity}:{stat.st_size}:{stat.st_mtime_ns}"
        digest = hashlib.sha256(f"{identity}\0{endpoint}\0{scope}".encode()).hexdigest()[:32]
        return f"{src.kind}-{digest}"

    def _redact(self, message: str, src: Source) -> str:
        # Our messages never include a token; library text quoted in them is not ours to vouch for.
        config = self.config
        userinfo = self._token_for(src) if isinstance(src, HttpFile) else None
        password = userinfo.partition(":")[2] if userinfo else None
        secrets = (config.hf_token, config.civitai_token, config.replicate_token, self._token_for(src), password)
        for secret in sorted(filter(None, secrets), key=len, reverse=True):  # the longest first: it may hold another
            message = message.replace(secret, "***")
        return message


def _lora_file(entry: CacheEntry) -> LoraFile:
    return LoraFile(entry.path, entry.source, entry.key, entry.sha256, entry.size, entry.trigger_words)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _replicate_error(error: HTTPStatusError, src: ReplicateModel, token: str | None, base: str) -> LoraError:
    if error.status in (401, 403):
        if token:
            return LoraError(
                f"Replicate refused REPLICATE_API_TOKEN for {src.display} (HTTP {error.status}): the token is "
                "invalid or its account cannot see this model."
            )
        return LoraError(
            f"Replicate requires a token for {src.display} (HTTP {error.status}); a private model needs "
            "REPLICATE_API_TOKEN set to a token of an account that can see it."
        )
    if error.status == 404:
        private = "" if token else " A private model also answers this way without REPLICATE_API_TOKEN."
        return LoraError(
            f"Replicate has no trained weights for {src.display} at {base} (HTTP 404). Check owner/model"
            f"{'/versions/<version>' if src.version else ''}: it must be a model trained on Replicate (for a "
            f"Hugging Face repo write huggingface.co/{src.owner}/{src.model}).{private}"
        )
    return LoraError(f"Replicate answered HTTP {error.status} for {src.display}. Try again later.")


def _url_error(error: HTTPStatusError, src: HttpFile) -> LoraError:
    if error.status in (401, 403):
        return LoraError(
            f"{src.display} refused the download (HTTP {error.status}): the URL needs credentials. Use a public "
            "or signed URL, or a Hugging Face/CivitAI/Replicate form that sends your token."
        )
    if error.status in (404, 410):
        return LoraError(f"Nothing found at {src.display} (HTTP {error.status}). Check the URL.")
    return LoraError(f"{src.display} answered HTTP {error.status}. Check the URL, or try again later.")
