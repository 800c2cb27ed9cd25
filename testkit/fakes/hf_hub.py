"""A fake Hugging Face Hub: a layer over the fake-server core (core.py) that huggingface_hub 2.4 downloads from.

Tests point huggingface_hub at it with `endpoint=hub.endpoint` (or HF_ENDPOINT in a subprocess) and get
the library's real behaviour: its URLs, headers, redirects, Range resumes and typed errors. Repos are
registered from a local folder or a {path: bytes} mapping:

    with FakeHub() as hub:
        hub.tokens.add("hf_good")
        hub.add_repo("black-forest-labs/FLUX.1-dev", folder, gated=True)
        snapshot_download("black-forest-labs/FLUX.1-dev", endpoint=hub.endpoint, token="hf_good", ...)
        assert "transformer/config.json" in hub.fetched("black-forest-labs/FLUX.1-dev")

What it serves, as huggingface_hub 2.4 calls it (models only):
- `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}` (`?blobs=true` adds sizes and oids):
  `model_info`, `repo_info` (the first call of `snapshot_download`).
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=&expand=`, paginated with a `Link: rel="next"`
  header: `list_repo_tree`, `list_repo_files`, `snapshot_download`.
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: `hf_hub_download`. Regular files answer 200 with
  `ETag` (git blob sha1), `X-Repo-Commit` and `Content-Length`; LFS files answer 302 to a second
  listener that plays the CDN, with `X-Linked-Etag` (sha256) and `X-Linked-Size`, as the real Hub does.
  Both honour `Range` (206 / 416), which huggingface_hub uses to resume a dropped download.
- The CDN serves signed URLs only and, like S3 presigned URLs, refuses requests that also carry an
  `Authorization` header: a client that forwards the Hub token to the CDN fails here as it would there.

Xet is never advertised (no `X-Xet-Hash`, no `xetHash` in trees), so hf_xet stays out of the way.

Auth mirrors the Hub: `hub.tokens` are the valid tokens; any request with another token gets 401
"Invalid credentials in Authorization header". Private repos answer 401 (anonymous) or 404
(authenticated without access) with `X-Error-Code: RepoNotFound`. Gated repos list publicly but their
files answer 401 (anonymous) or 403 (token without access) with `X-Error-Code: GatedRepo`.

The core records every request of both listeners in `hub.requests` (`server` is "hub" or "cdn"), with
the repo and file it named. Faults act on a file by `(repo_id, filename)`, whichever listener serves it:
`hub.drop_connection(...)`, or any body fault of faults.py through `hub.inject(...)`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import quote, unquote, urlencode

from testkit.fakes.core import FakeSite, FileReply, RecordedRequest, Refused, Reply, Request, error, s3_error
from testkit.fakes.faults import DropConnection

# Extensions the real Hub stores in LFS by default (.gitattributes of a new repo), trimmed to ours.
DEFAULT_LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.onnx", "*.model")
TREE_PAGE_SIZE = 1000  # the Hub's page size for non-expanded tree listings

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


@dataclass(frozen=True)
class FakeFile:
    """One file of a fake repo, with the hashes the Hub reports for it."""

    path: str
    content: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.content)

    @cached_property  # hashed once: every request for the file needs it
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def lfs_pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n").encode()

    @cached_property
    def blob_id(self) -> str:
        """Git blob sha1 of what git stores: the pointer for LFS files, the content otherwise."""
        stored = self.lfs_pointer if self.lfs else self.content
        return hashlib.sha1(b"blob %d\0" % len(stored) + stored).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id


@dataclass(frozen=True)
class FakeRepo:
    """One commit of a repo; `FakeHub.add_repo` again with new files makes the next commit."""

    repo_id: str
    files: Mapping[str, FakeFile]
    gated: str | bool = False  # False, "auto" or "manual", as model_info reports it
    private: bool = False
    authorized_tokens: frozenset[str] | None = None  # None: every valid token has access

    @cached_property
    def sha(self) -> str:
        """A commit id that changes whenever any file does."""
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(f"{path}\0{self.files[path].blob_id}\0".encode())
        return digest.hexdigest()

    def has_access(self, token: str | None) -> bool:
        return token is not None and (self.authorized_tokens is None or token in self.authorized_tokens)


class FakeHub(FakeSite):
    """The fake Hub and its CDN: two listeners sharing one set of repos, tokens, faults and records."""

    roles = ("hub", "cdn")

    def __init__(self) -> None:
        super().__init__()
        self.tokens: set[str] = set()
        self.repos: dict[str, FakeRepo] = {}
        self.tree_page_size = TREE_PAGE_SIZE
        self._secret = secrets.token_bytes(16)

    @property
    def endpoint(self) -> str:
        return self.url_of("hub")

    @property
    def cdn_endpoint(self) -> str:
        return self.url_of("cdn")

    def reset(self) -> None:
        """Forget repos, tokens, faults and requests: one hub can then serve many tests."""
        super().reset()
        with self._lock:
            self.repos.clear()
        self.tokens.clear()
        self.tree_page_size = TREE_PAGE_SIZE

    # -- repos -----------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        source: Path | str | Mapping[str, bytes],
        *,
        gated: bool | str = False,
        private: bool = False,
        authorized_tokens: set[str] | None = None,
        lfs_patterns: tuple[str, ...] = DEFAULT_LFS_PATTERNS,
    ) -> FakeRepo:
        """Serve `source` (a folder, read now, or {repo path: bytes}) as model repo `repo_id`.

        `gated=True` means "manual" approval; `authorized_tokens` limits who passed the gate or may
        see the private repo (default: every token in `hub.tokens`).
        """
        contents = _read_folder(Path(source)) if isinstance(source, (str, Path)) else dict(source)
        files = {
            path: FakeFile(path, data, lfs=any(fnmatch.fnmatch(path, p) for p in lfs_patterns))
            for path, data in contents.items()
        }
        repo = FakeRepo(
            repo_id,
            files,
            gated="manual" if gated is True else gated,
            private=private,
            authorized_tokens=frozenset(authorized_tokens) if authorized_tokens is not None else None,
        )
        with self._lock:
            self.repos[repo_id] = repo
        return repo

    def drop_connection(
        self, repo_id: str, filename: str, *, after_bytes: int, times: int | None = 1
    ) -> DropConnection:
        """Cut the next `times` downloads of `filename` at byte `after_bytes` of the file."""
        return self.inject(DropConnection(target=(repo_id, filename), after_bytes=after_bytes, times=times))

    # -- what was asked --------------------------------------------------------------------------

    def fetched(self, repo_id: str | None = None) -> list[str]:
        """Files whose bytes were sent (GET answered 200/206, even if cut), in order, repeats kept."""
        return [r.filename for r in self._file_requests(repo_id) if r.method == "GET" and r.status in (200, 206)]

    def requested(self, repo_id: str | None = None) -> list[str]:
        """Files named by any request (HEAD or GET, any answer), in order, repeats kept."""
        return [r.filename for r in self._file_requests(repo_id)]

    def _file_requests(self, repo_id: str | None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.filename is not None and repo_id in (None, r.repo_id)]

    # -- answers ---------------------------------------------------------------------------------

    def answer(self, request: Request) -> Reply | FileReply:
        if request.server == "cdn":
            return self._answer_cdn(request)
        if request.target.startswith("/api/models/"):
            return self._answer_api(request, request.target.removeprefix("/api/models/"))
        if "/resolve/" in request.target:
            return self._answer_resolve(request)
        self._checked_token(request)
        raise _hub_error(404, "Not Found")

    def _answer_api(self, request: Request, rest: str) -> Reply:
        token = self._checked_token(request)
        repo, tail = self._find_repo(request, rest)
        _check_visible(repo, token)
        parts = tail.split("/", 1) if tail else []
        if not parts:
            return Reply.json(_model_info(repo, _flag(request, "blobs")))
        if parts[0] == "revision" and len(parts) == 2:
            _check_revision(repo, unquote(parts[1]))
            return Reply.json(_model_info(repo, _flag(request, "blobs")))
        if parts[0] == "tree" and len(parts) == 2:
            revision, _, path = parts[1].partition("/")
            _check_revision(repo, unquote(revision))
            return self._tree_page(request, repo, unquote(path))
        raise _hub_error(404, "Not Found")

    def _answer_resolve(self, request: Request) -> Reply | FileReply:
        repo_part, _, rest = request.target.lstrip("/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        # Named before any check, so that refused requests are recorded with what they asked for.
        request.repo_id, request.filename = unquote(repo_part), unquote(filename)
        token = self._checked_token(request)
        repo, _ = self._find_repo(request, repo_part)
        _check_visible(repo, token)
        _check_revision(repo, unquote(revision))
        commit = {"X-Repo-Commit": repo.sha}
        if repo.gated and not repo.has_access(token):
            raise _gated_error(repo, anonymous=token is None, headers=commit)
        file = repo.files.get(request.filename)
        if file is None:
            raise _hub_error(404, "Entry not found", "EntryNotFound", commit)
        if file.lfs:
            return Reply(302, headers={**commit, **self._cdn_headers(repo, file)})
        return FileReply(file.content, (repo.repo_id, file.path), commit, etag=f'"{file.etag}"')

    def _answer_cdn(self, request: Request) -> FileReply:
        sha256 = request.path.removeprefix("/lfs/")
        repo = self.repos.get(request.query.get("repo", ""))
        file = repo.files.get(request.query.get("file", "")) if repo else None
        if repo is None or file is None or file.sha256 != sha256:
            raise s3_error(404, "NoSuchKey")
        request.repo_id, request.filename = repo.repo_id, file.path
        if not hmac.compare_digest(self._signature(repo.repo_id, file), request.query.get("sig", "")):
            raise s3_error(403, "SignatureDoesNotMatch")
        if request.authorization is not None:
            # What S3 answers to a presigned URL that also carries an Authorization header.
            raise s3_error(400, "InvalidArgument", "Only one auth mechanism allowed")
        return FileReply(file.content, (repo.repo_id, file.path), etag=f'"{file.sha256}"')

    def _cdn_headers(self, repo: FakeRepo, file: FakeFile) -> dict[str, str]:
        """The redirect of an LFS file to its signed CDN URL, with the headers the Hub adds to it."""
        query = urlencode({"repo": repo.repo_id, "file": file.path, "sig": self._signature(repo.repo_id, file)})
        return {
            "Location": f"{self.cdn_endpoint}/lfs/{file.sha256}?{query}",
            "ETag": f'"{file.sha256}"',
            "X-Linked-Etag": f'"{file.sha256}"',
            "X-Linked-Size": str(file.size),
        }

    def _signature(self, repo_id: str, file: FakeFile) -> str:
        message = f"{file.sha256}\0{repo_id}\0{file.path}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def _tree_page(self, request: Request, repo: FakeRepo, path: str) -> Reply:
        entries = _tree_entries(repo, path, recursive=_flag(request, "recursive"))
        if entries is None:
            raise _hub_error(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": repo.sha})
        offset = int(request.query.get("cursor", "0"))
        page = entries[offset : offset + self.tree_page_size]
        headers = {}
        if offset + len(page) < len(entries):
            query = {**request.query, "cursor": str(offset + len(page))}
            headers["Link"] = f'<{self.endpoint}{quote(request.target)}?{urlencode(query)}>; rel="next"'
        return Reply.json(page, headers=headers)

    # -- checks ----------------------------------------------------------------------------------

    def _checked_token(self, request: Request) -> str | None:
        """The request's token; the Hub answers 401 to any token it does not know, even on public repos."""
        token = _token(request)
        if token is not None and token not in self.tokens:
            raise _hub_error(401, INVALID_CREDENTIALS)
        return token

    def _find_repo(self, request: Request, rest: str) -> tuple[FakeRepo, str]:
        """Split `owner/name/tail` (or legacy `name/tail`) into a registered repo and the tail."""
        segments = [unquote(s) for s in rest.split("/")]
        for n in (2, 1):
            repo_id = "/".join(segments[:n])
            if len(segments) >= n and repo_id in self.repos:
                request.repo_id = repo_id
                return self.repos[repo_id], "/".join(rest.split("/")[n:])
        # The Hub hides whether a missing repo exists: same answer as a private one.
        raise _hub_error(401 if _token(request) is None else 404, "Repository not found", "RepoNotFound")


def _read_folder(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        raise FileNotFoundError(f"fake repo folder {folder} does not exist")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hub_error(status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None) -> Refused:
    """An error in the Hub's format: `X-Error-Code` (what huggingface_hub types its errors by),
    `X-Error-Message` and a JSON body."""
    codes = {"X-Error-Code": code} if code is not None else {}
    return error(status, message, {**codes, "X-Error-Message": message, **(headers or {})})


def _token(request: Request) -> str | None:
    value = request.authorization
    return None if value is None else value.removeprefix("Bearer ").strip()


def _flag(request: Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true")


def _check_visible(repo: FakeRepo, token: str | None) -> None:
    if repo.private and not repo.has_access(token):
        raise _hub_error(401 if token is None else 404, "Repository not found", "RepoNotFound")


def _check_revision(repo: FakeRepo, revision: str) -> None:
    if revision not in ("main", repo.sha):
        raise _hub_error(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def _gated_error(repo: FakeRepo, anonymous: bool, headers: dict[str, str]) -> Refused:
    if anonymous:
        message = (
            f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
            "authenticated to access it. Please log in."
        )
        return _hub_error(401, message, "GatedRepo", headers)
    message = (
        f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
        f"Visit https://huggingface.co/{repo.repo_id} to ask for access."
    )
    return _hub_error(403, message, "GatedRepo", headers)


def _model_info(repo: FakeRepo, blobs: bool) -> dict:
    return {
        "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": repo.sha,
        "lastModified": "2024-08-01T00:00:00.000Z",
        "createdAt": "2024-08-01T00:00:00.000Z",
        "private": repo.private,
        "gated": repo.gated,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": [_sibling(f, blobs) for f in sorted(repo.files.values(), key=lambda f: f.path)],
    }


def _sibling(file: FakeFile, blobs: bool) -> dict:
    if not blobs:
        return {"rfilename": file.path}
    sibling: dict = {"rfilename": file.path, "blobId": file.blob_id, "size": file.size}
    if file.lfs:
        sibling["lfs"] = {"sha256": file.sha256, "size": file.size, "pointerSize": len(file.lfs_pointer)}
    return sibling


def _tree_entries(repo: FakeRepo, path: str, recursive: bool) -> list[dict] | None:
    """The Hub's tree listing under `path`: folders then files, or None if `path` is no folder."""
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    below = [p for p in sorted(repo.files) if p.startswith(prefix)]
    if prefix and not below:
        return None
    folders: set[str] = set()
    files: list[str] = []
    for p in below:
        relative = p[len(prefix) :].split("/")
        for depth in range(1, len(relative) if recursive else min(len(relative), 2)):
            folders.add(prefix + "/".join(relative[:depth]))
        if recursive or len(relative) == 1:
            files.append(p)
    entries = [{"type": "directory", "oid": _tree_oid(repo, f), "size": 0, "path": f} for f in sorted(folders)]
    return entries + [_tree_file(repo.files[p]) for p in files]


def _tree_file(file: FakeFile) -> dict:
    entry: dict = {"type": "file", "oid": file.blob_id, "size": file.size, "path": file.path}
    if file.lfs:
        entry["lfs"] = {"oid": file.sha256, "size": file.size, "pointerSize": len(file.lfs_pointer)}
    return entry


def _tree_oid(repo: FakeRepo, folder: str) -> str:
    return hashlib.sha1(f"{repo.sha}\0{folder}".encode()).hexdigest()


__all__ = ["DEFAULT_LFS_PATTERNS", "FakeFile", "FakeHub", "FakeRepo"]
