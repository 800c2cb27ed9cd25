"""Parse a user's LoRA string into a typed source. Pure: no I/O, no network, no environment.

Every source knows two strings: `display`, the user's string with anything secret removed (query
strings, userinfo, data payloads), which is all that logs, errors and sidecars ever show; and
`identity`, the normalized string the cache keys on. Endpoints and tokens are not part of a source:
the fetcher adds them to the key, because the same string means different files on different hubs. A
URL's `user:password@` is a credential like a token (`HttpFile.credentials`): kept out of `display` and
`identity`, it scopes the cache entry as the fetcher's tokens do.

URLs are checked here, before anything is fetched: a host or port no request could use
(`guarded_download.url_problem`: `http://[::1/x`, `http://host:abc/x`, `http://xn--/x`, `http://0177.0.0.1/x`)
is one LoraError saying what is wrong, and a Hugging Face file or revision with `.` or `..` segments
(`%2e%2e` included) is refused, since the Hub would resolve them to another path than the one named.

Relative local paths need a `./` (or end in .safetensors/.tar): `owner/model` is a Replicate model.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from guarded_download import redact_url, url_problem

from .errors import LoraError

HF_HOSTS = ("huggingface.co", "hf.co")
CIVITAI_HOST = "civitai.com"
REPLICATE_HOST = "replicate.com"
# Hosts written without a scheme that are still URLs, not Replicate `owner/model` names.
_HOST_NAME = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}(:\d+)?")  # a dotted name ending in a TLD
_BARE_HOSTS = (*HF_HOSTS, CIVITAI_HOST, REPLICATE_HOST, "replicate.delivery")
# CivitAI download-endpoint parameters that choose a file; `token=` is kept apart, anything else is dropped.
CIVITAI_FILE_PARAMS = ("type", "format", "size", "fp")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9]+$")
_DIGITS = re.compile(r"^[0-9]+$")

ACCEPTED_FORMS = """Accepted forms:
  - Replicate: owner/model, owner/model/<version>, owner/model/versions/<version>, the same after \
https://replicate.com/, or a .tar URL (https://replicate.delivery/...)
  - Hugging Face: huggingface.co/<owner>/<repo>, or one file: huggingface.co/<owner>/<repo>/blob/main/<file>.safetensors
  - CivitAI: civitai.com/models/<model id>[?modelVersionId=<version id>], civitai.com/api/download/models/<version id>
  - any http(s) URL of a .safetensors file (or of a .tar holding one)
  - a data: URI (base64 of a .safetensors file, or of a tar holding one)
  - a local file or folder inside LORA_LOCAL_DIRS (when set): /absolute/path, ./relative/path, file:///path"""


def _sha(text: str | bytes, length: int = 16) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:length]


@dataclass(frozen=True)
class ReplicateModel:
    """A Replicate trained model; its `_weights` endpoint serves the trainer's tar."""

    owner: str
    model: str
    version: str | None = None
    kind = "replicate"

    @property
    def display(self) -> str:
        suffix = f"/versions/{self.version}" if self.version else ""
        return f"{self.owner}/{self.model}{suffix}"

    @property
    def identity(self) -> str:
        return f"replicate:{self.display.lower()}"

    def weights_url(self, base_url: str) -> str:
        suffix = f"/versions/{self.version}" if self.version else ""
        return f"{base_url}/{self.owner}/{self.model}{suffix}/_weights"


@dataclass(frozen=True)
class HuggingFaceFile:
    """A Hugging Face model repo at a revision, and the file in it (None: pick one by the rules)."""

    repo_id: str
    revision: str = "main"
    filename: str | None = None
    kind = "hf"

    @property
    def display(self) -> str:
        if self.filename is None:
            rev = "" if self.revision == "main" else f"/tree/{self.revision}"
            return f"huggingface.co/{self.repo_id}{rev}"
        return f"huggingface.co/{self.repo_id}/blob/{self.revision}/{self.filename}"

    @property
    def identity(self) -> str:
        return f"hf:{self.repo_id}@{self.revision}:{self.filename or ''}"


@dataclass(frozen=True)
class CivitaiModel:
    """A CivitAI model page; without a version id, its newest version."""

    model_id: int
    version_id: int | None = None
    token: str | None = field(default=None, repr=False)  # a `?token=` the user pasted; never shown
    kind = "civitai"

    @property
    def display(self) -> str:
        query = f"?modelVersionId={self.version_id}" if self.version_id is not None else ""
        return f"civitai.com/models/{self.model_id}{query}"

    @property
    def identity(self) -> str:
        return f"civitai:model:{self.model_id}:{self.version_id if self.version_id is not None else 'latest'}"


@dataclass(frozen=True)
class CivitaiVersion:
    """CivitAI's download endpoint for one model version (the id download links carry)."""

    version_id: int
    params: tuple[tuple[str, str], ...] = ()  # file selectors only, never a token
    token: str | None = field(default=None, repr=False)  # a `?token=` the user pasted; never shown
    kind = "civitai"

    @property
    def query(self) -> str:
        return "&".join(f"{k}={v}" for k, v in self.params)

    @property
    def display(self) -> str:
        return f"civitai.com/api/download/models/{self.version_id}" + (f"?{self.query}" if self.params else "")

    @property
    def identity(self) -> str:
        return f"civitai:version:{self.version_id}:{self.query}"


@dataclass(frozen=True)
class HttpFile:
    """Any http(s) URL of a .safetensors file or of a tar (`archive`). The URL may carry credentials."""

    url: str = field(repr=False)
    archive: bool = False
    kind = "url"

    @property
    def display(self) -> str:
        return redact_url(self.url)

    @property
    def credentials(self) -> str | None:
        """The URL's `user:password` (httpx2 sends it as Basic auth): a credential, never shown."""
        userinfo, at, _ = urlsplit(self.url).netloc.rpartition("@")
        return userinfo if at and userinfo else None

    @property
    def identity(self) -> str:
        # The query (signatures, tokens) is never stored in clear, but two URLs that differ only there
        # are different grants: key on its hash so one signed URL's file is not served for another.
        # Userinfo is left out here: the fetcher scopes the key by it, as by a token.
        parts = urlsplit(self.url)
        base = f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}{_port(parts)}{parts.path}"
        return f"url:{base}" + (f"#query-sha256={_sha(parts.query)}" if parts.query else "")


@dataclass(frozen=True)
class DataUri:
    """A data: URI payload: a raw .safetensors file, or a tar holding one."""

    payload: bytes = field(repr=False)
    media_type: str = ""
    kind = "data"

    @property
    def display(self) -> str:
        return f"data:{self.media_type};base64,… ({len(self.payload)} bytes)"

    @property
    def identity(self) -> str:
        return f"data:{hashlib.sha256(self.payload).hexdigest()}"


@dataclass(frozen=True)
class LocalPath:
    """A file or folder on this machine (offline deployments); a folder must hold one LoRA."""

    path: Path
    kind = "local"

    @property
    def display(self) -> str:
        return str(self.path)

    @property
    def identity(self) -> str:
        return f"local:{self.path}"


Source = ReplicateModel | HuggingFaceFile | CivitaiModel | CivitaiVersion | HttpFile | DataUri | LocalPath


def parse_source(text: str) -> Source:
    """The source `text` names, or a LoraError listing the accepted forms."""
    s = text.strip()
    if not s:
        raise LoraError("The LoRA is empty. " + ACCEPTED_FORMS)
    lower = s.lower()
    if lower.startswith("data:"):
        return _parse_data_uri(s)
    if lower.startswith("file://"):
        return LocalPath(Path(unquote(urlsplit(s).path)))
    if "://" in s:
        if not lower.startswith(("http://", "https://")):
            raise unsupported(s)
        return _parse_url(s)
    if _looks_local(lower):
        return LocalPath(Path(s).expanduser())
    host = lower.split("/", 1)[0].removeprefix("www.")
    if host in _BARE_HOSTS or host.endswith(".replicate.delivery") or _names_a_host(lower):
        return _parse_url(f"https://{s}")
    return _parse_replicate(s.split("/"), s)


def unsupported(text: str, why: str = "") -> LoraError:
    shown = redact_url(text) if "://" in text else _without_query(_without_userinfo(text))
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    reason = f" {why}" if why else ""
    return LoraError(f"Cannot use {shown!r} as a LoRA.{reason}\n{ACCEPTED_FORMS}")


def _without_userinfo(text: str) -> str:
    """`text` without a `user:password@` before its first slash (a URL typed without its scheme)."""
    first, slash, rest = text.partition("/")
    return first.rpartition("@")[2] + slash + rest


def _without_query(text: str) -> str:
    """`text` without what looks like a query string (`?key=value`, perhaps a signature), for messages."""
    head, _, query = text.partition("?")
    return f"{head}?…" if "=" in query else text


def _port(parts) -> str:
    try:
        return f":{parts.port}" if parts.port else ""
    except ValueError:  # a malformed port; the URL fails later with a clear error
        return ""


def _looks_local(lower: str) -> bool:
    if lower.startswith(("/", "./", "../", "~")) or lower in (".", ".."):
        return True
    host = lower.split("/", 1)[0].removeprefix("www.")
    return lower.endswith((".safetensors", ".tar")) and host not in _BARE_HOSTS and not _names_a_host(lower)


def _names_a_host(lower: str) -> bool:
    """`example.com/lora.safetensors` (or `user:password@example.com/...`): a URL typed without its scheme
    (relative local paths start with ./)."""
    first, slash, _ = lower.partition("/")
    return bool(slash) and _HOST_NAME.fullmatch(first.rpartition("@")[2]) is not None


def _parse_url(url: str) -> Source:
    why = url_problem(url)
    if why is not None:
        raise LoraError(f"Cannot use {redact_url(url)!r} as a LoRA: {why}. Check the URL.")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().removeprefix("www.")
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if host in HF_HOSTS:
        return _parse_hf(segments, url)
    if host == CIVITAI_HOST:
        return _parse_civitai(segments, parts.query, url)
    if host == REPLICATE_HOST:
        return _parse_replicate(segments, url)
    if not host:
        raise unsupported(url, "The URL has no host.")
    path = parts.path.lower()
    if path.endswith(".safetensors"):
        return HttpFile(url)
    if path.endswith(".tar"):
        return HttpFile(url, archive=True)
    raise unsupported(url, "A URL must end in .safetensors (or .tar for an archive holding one).")


def _parse_hf(segments: list[str], url: str) -> HuggingFaceFile:
    if segments and segments[0] in ("datasets", "spaces"):
        raise unsupported(url, "Only Hugging Face model repos hold LoRAs, not datasets or Spaces.")
    if len(segments) < 2 or not (_NAME.match(segments[0]) and _NAME.match(segments[1])):
        raise unsupported(url, "A Hugging Face LoRA is huggingface.co/<owner>/<repo>[/blob/<revision>/<file>].")
    repo_id, rest = f"{segments[0]}/{segments[1]}", segments[2:]
    if not rest:
        return HuggingFaceFile(repo_id)
    if rest[0] in ("blob", "resolve") and len(rest) >= 3:
        return HuggingFaceFile(repo_id, _hf_path(rest[1], url), _hf_filename("/".join(rest[2:]), url))
    if rest[0] == "tree" and len(rest) == 2:
        return HuggingFaceFile(repo_id, _hf_path(rest[1], url))
    if rest[-1].lower().endswith(".safetensors") and rest[0] not in ("blob", "resolve", "tree"):
        return HuggingFaceFile(repo_id, "main", _hf_filename("/".join(rest), url))
    raise unsupported(url, "A Hugging Face LoRA is huggingface.co/<owner>/<repo>[/blob/<revision>/<file>].")


def _hf_filename(name: str, url: str) -> str:
    if not name.lower().endswith(".safetensors"):
        raise unsupported(url, "Only .safetensors LoRAs are loaded; name a .safetensors file of the repo.")
    return _hf_path(name, url)


def _hf_path(name: str, url: str) -> str:
    """A revision or file name of a repo, decoded; `.`, `..` and empty segments would name another path."""
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise unsupported(
            url,
            "A Hugging Face file or revision cannot have '.', '..' or empty segments; name it as the repo lists it.",
        )
    return name


def _parse_civitai(segments: list[str], query: str, url: str) -> CivitaiModel | CivitaiVersion:
    params = parse_qsl(query)
    if len(segments) >= 2 and segments[0] == "models" and _DIGITS.match(segments[1]):
        version = dict(params).get("modelVersionId")
        if version is not None and not _DIGITS.match(version):
            raise unsupported(url, f"modelVersionId must be a number, not {version!r}.")
        return CivitaiModel(int(segments[1]), int(version) if version is not None else None, _url_token(params))
    if segments[:3] == ["api", "download", "models"] and len(segments) == 4 and _DIGITS.match(segments[3]):
        kept = tuple((k, v) for k, v in params if k in CIVITAI_FILE_PARAMS)
        return CivitaiVersion(int(segments[3]), kept, _url_token(params))
    raise unsupported(
        url, "A CivitAI LoRA is civitai.com/models/<model id> or civitai.com/api/download/models/<version id>."
    )


def _url_token(params: list[tuple[str, str]]) -> str | None:
    """CivitAI download links may carry the user's API key (`?token=`): used like CIVITAI_API_TOKEN."""
    return dict(params).get("token") or None


def _parse_replicate(segments: list[str], text: str) -> ReplicateModel:
    if len(segments) == 4 and segments[2] == "versions":
        segments = [segments[0], segments[1], segments[3]]
    names_ok = len(segments) in (2, 3) and all(_NAME.match(s) for s in segments[:2])
    if not names_ok or (len(segments) == 3 and not _VERSION.match(segments[2])):
        raise unsupported(text)
    return ReplicateModel(segments[0], segments[1], segments[2] if len(segments) == 3 else None)


def _parse_data_uri(uri: str) -> DataUri:
    header, comma, data = uri[len("data:") :].partition(",")
    params = header.split(";")
    if not comma or "base64" not in (p.strip().lower() for p in params[1:]):
        raise unsupported("data:…", "A data: URI must be base64: data:application/octet-stream;base64,<data>.")
    try:
        payload = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise LoraError(f"The data: URI is not valid base64 ({error}).") from None
    if not payload:
        raise LoraError("The data: URI holds no data: it should be base64 of a .safetensors file or of a tar.")
    return DataUri(payload, params[0].strip())
