"""A fake Hugging Face Hub: a real HTTP server on loopback that huggingface_hub 2.4 can download from.

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
  server that plays the CDN, with `X-Linked-Etag` (sha256) and `X-Linked-Size`, as the real Hub does.
  Both honour `Range` (206 / 416), which huggingface_hub uses to resume a dropped download.
- The CDN serves signed URLs only and, like S3 presigned URLs, refuses requests that also carry an
  `Authorization` header: a client that forwards the Hub token to the CDN fails here as it would there.

Xet is never advertised (no `X-Xet-Hash`, no `xetHash` in trees), so hf_xet stays out of the way.

Auth mirrors the Hub: `hub.tokens` are the valid tokens; any request with another token gets 401
"Invalid credentials in Authorization header". Private repos answer 401 (anonymous) or 404
(authenticated without access) with `X-Error-Code: RepoNotFound`. Gated repos list publicly but their
files answer 401 (anonymous) or 403 (token without access) with `X-Error-Code: GatedRepo`.

Every request is recorded (`hub.requests`) with whether an Authorization header was present, never
its value. Faults are objects in `hub.faults` that the handler claims at the point they act; the only
one so far is `DropConnection` (see `hub.drop_connection`). Later faults (stalls, 5xx then recovery,
a wrong Content-Length) are further `Fault` subclasses claimed the same way.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

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


@dataclass(frozen=True)
class RecordedRequest:
    server: str  # "hub" or "cdn"
    method: str
    path: str  # URL-decoded, without the query
    query: str
    status: int
    authorized: bool  # an Authorization header was present (its value is never kept)
    range: str | None
    repo_id: str | None  # the repo a file request or API call named
    filename: str | None  # the repo file a resolve or CDN request named


@dataclass(kw_only=True)
class Fault:
    """Something that goes wrong on requests for one file, `times` times (None: until cleared)."""

    repo_id: str
    filename: str
    times: int | None = 1
    hits: int = 0

    def claim(self, repo_id: str, filename: str, **context: int) -> bool:
        """Count a hit and say yes when this fault acts on that request (`context` is kind-specific)."""
        if (repo_id, filename) != (self.repo_id, self.filename) or not self.applies(**context):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True

    def applies(self, **context: int) -> bool:
        return True


@dataclass(kw_only=True)
class DropConnection(Fault):
    """Close the connection once the response reaches byte `after_bytes` of the file.

    The offset is absolute in the file: a Range request that resumes at or past it is cut right
    after its headers, so `times=None` is an outage at that point that no resume gets past.
    """

    after_bytes: int

    def applies(self, *, end: int, **context: int) -> bool:
        return self.after_bytes < end  # a body that ends before the cut point goes through whole


FaultT = TypeVar("FaultT", bound=Fault)


class FakeHub:
    """The fake Hub and its CDN: two loopback servers sharing one set of repos, tokens and records."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.repos: dict[str, FakeRepo] = {}
        self.faults: list[Fault] = []
        self.tree_page_size = TREE_PAGE_SIZE
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(16)
        self._servers: list[_Server] = []
        self._connections: set[socket.socket] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        for role in ("hub", "cdn"):
            server = _Server(("127.0.0.1", 0), _Handler)
            server.hub, server.role = self, role
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        return self

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
        # Keep-alive connections would otherwise hold their handler threads until the client hangs up.
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for server in self._servers:
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        return self._url("hub")

    @property
    def cdn_endpoint(self) -> str:
        return self._url("cdn")

    def _url(self, role: str) -> str:
        server = next(s for s in self._servers if s.role == role)
        host, port = server.server_address[:2]
        return f"http://{host}:{port}"

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

    # -- faults ----------------------------------------------------------------------------------

    def drop_connection(
        self, repo_id: str, filename: str, *, after_bytes: int, times: int | None = 1
    ) -> DropConnection:
        """Cut the next `times` downloads of `filename` at byte `after_bytes` of the file."""
        fault = DropConnection(repo_id=repo_id, filename=filename, after_bytes=after_bytes, times=times)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def claim_fault(self, kind: type[FaultT], repo_id: str, filename: str, **context: int) -> FaultT | None:
        """The first fault of `kind` that acts on this request, counted as hit; None if none does."""
        with self._lock:
            for fault in self.faults:
                if isinstance(fault, kind) and fault.claim(repo_id, filename, **context):
                    return fault
        return None

    # -- request log -----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def fetched(self, repo_id: str | None = None) -> list[str]:
        """Files whose bytes were sent (GET answered 200/206, even if cut), in order, repeats kept."""
        return [
            r.filename
            for r in self._file_requests(repo_id)
            if r.filename is not None and r.method == "GET" and r.status in (200, 206)
        ]

    def requested(self, repo_id: str | None = None) -> list[str]:
        """Files named by any request (HEAD or GET, any answer), in order, repeats kept."""
        return [r.filename for r in self._file_requests(repo_id) if r.filename is not None]

    def _file_requests(self, repo_id: str | None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.filename is not None and repo_id in (None, r.repo_id)]

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # -- helpers for the handler -----------------------------------------------------------------

    def cdn_url(self, repo: FakeRepo, file: FakeFile) -> str:
        query = {"repo": repo.repo_id, "file": file.path}
        query["sig"] = self._sign(file.sha256, query)
        return f"{self.cdn_endpoint}/lfs/{file.sha256}?{urlencode(query)}"

    def check_signature(self, sha256: str, query: Mapping[str, str]) -> bool:
        expected = self._sign(sha256, {"repo": query.get("repo", ""), "file": query.get("file", "")})
        return hmac.compare_digest(expected, query.get("sig", ""))

    def _sign(self, sha256: str, query: Mapping[str, str]) -> str:
        message = f"{sha256}\0{query['repo']}\0{query['file']}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


def _read_folder(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        raise FileNotFoundError(f"fake repo folder {folder} does not exist")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub
    role: str


class _HttpError(Exception):
    """An error answer in the Hub's format: status, `X-Error-Code`, `X-Error-Message`, JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx pools connections
    server: _Server
    timeout = 30  # an idle keep-alive connection frees its thread eventually
    _repo_id: str | None = None  # the repo and file the current request names, for the record
    _filename: str | None = None

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the client's
        # delayed ACK stall every keep-alive response by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.hub.track(self.connection, True)

    def finish(self) -> None:
        self.server.hub.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request log is `hub.requests`; stderr noise helps no one

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    # -- routing ---------------------------------------------------------------------------------

    def _dispatch(self, send_body: bool) -> None:
        self._repo_id = self._filename = None
        url = urlsplit(self.path)
        self._query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self._send_body = send_body
        try:
            if self.server.role == "cdn":
                self._serve_cdn(url.path)
            else:
                self._serve_hub(url.path)
        except _HttpError as error:
            self._send_error(error)

    def _serve_hub(self, raw_path: str) -> None:
        if raw_path.startswith("/api/models/"):
            self._serve_api(raw_path[len("/api/models/") :])
        elif "/resolve/" in raw_path:
            self._serve_resolve(raw_path)
        else:
            self._checked_token()
            raise _HttpError(404, "Not Found")

    def _serve_api(self, rest: str) -> None:
        token = self._checked_token()
        repo, tail = self._find_repo(rest)
        self._check_repo_visible(repo, token)
        parts = tail.split("/", 1) if tail else []
        if not parts:
            self._send_json(_model_info(repo, self._flag("blobs")))
        elif parts[0] == "revision" and len(parts) == 2:
            self._check_revision(repo, unquote(parts[1]))
            self._send_json(_model_info(repo, self._flag("blobs")))
        elif parts[0] == "tree" and len(parts) == 2:
            revision, _, path = parts[1].partition("/")
            self._check_revision(repo, unquote(revision))
            self._send_tree(repo, unquote(path))
        else:
            raise _HttpError(404, "Not Found")

    def _serve_resolve(self, raw_path: str) -> None:
        repo_part, _, rest = raw_path.lstrip("/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        # Named before any check, so that refused requests are recorded with what they asked for.
        self._repo_id, self._filename = unquote(repo_part), unquote(filename)
        token = self._checked_token()
        repo, _ = self._find_repo(repo_part)
        self._check_repo_visible(repo, token)
        self._check_revision(repo, unquote(revision))
        commit = {"X-Repo-Commit": repo.sha}
        if repo.gated and not repo.has_access(token):
            raise _gated_error(repo, anonymous=token is None, headers=commit)
        file = repo.files.get(self._filename)
        if file is None:
            raise _HttpError(404, "Entry not found", "EntryNotFound", commit)
        if file.lfs:
            self._send_redirect(repo, file, commit)
        else:
            self._send_file(file, {**commit, "ETag": f'"{file.etag}"'})

    def _serve_cdn(self, raw_path: str) -> None:
        sha256 = unquote(raw_path).removeprefix("/lfs/")
        repo = self.server.hub.repos.get(self._query.get("repo", ""))
        file = repo.files.get(self._query.get("file", "")) if repo else None
        if repo is None or file is None or file.sha256 != sha256:
            raise _HttpError(404, "NoSuchKey")
        self._repo_id, self._filename = repo.repo_id, file.path
        if not self.server.hub.check_signature(sha256, self._query):
            raise _HttpError(403, "SignatureDoesNotMatch")
        if self.headers.get("Authorization") is not None:
            # What S3 answers to a presigned URL that also carries an Authorization header.
            raise _HttpError(400, "Only one auth mechanism allowed")
        self._send_file(file, {"ETag": f'"{file.sha256}"'})

    # -- checks ----------------------------------------------------------------------------------

    def _token(self) -> str | None:
        value = self.headers.get("Authorization")
        if value is None:
            return None
        return value.removeprefix("Bearer ").strip()

    def _checked_token(self) -> str | None:
        """The request's token; the Hub answers 401 to any token it does not know, even on public repos."""
        token = self._token()
        if token is not None and token not in self.server.hub.tokens:
            raise _HttpError(401, INVALID_CREDENTIALS)
        return token

    def _flag(self, name: str) -> bool:
        return self._query.get(name, "").lower() in ("1", "true")

    def _find_repo(self, rest: str) -> tuple[FakeRepo, str]:
        """Split `owner/name/tail` (or legacy `name/tail`) into a registered repo and the tail."""
        segments = [unquote(s) for s in rest.split("/")]
        repos = self.server.hub.repos
        for n in (2, 1):
            repo_id = "/".join(segments[:n])
            if len(segments) >= n and repo_id in repos:
                self._repo_id = repo_id
                return repos[repo_id], "/".join(rest.split("/")[n:])
        # The Hub hides whether a missing repo exists: same answer as a private one.
        anonymous = self._token() is None
        raise _HttpError(401 if anonymous else 404, "Repository not found", "RepoNotFound")

    def _check_repo_visible(self, repo: FakeRepo, token: str | None) -> None:
        if repo.private and not repo.has_access(token):
            raise _HttpError(401 if token is None else 404, "Repository not found", "RepoNotFound")

    def _check_revision(self, repo: FakeRepo, revision: str) -> None:
        if revision not in ("main", repo.sha):
            raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # -- responses -------------------------------------------------------------------------------

    def send_response(self, code: int, message: str | None = None) -> None:
        # Recorded before any byte leaves, so a client that got its answer always finds it logged.
        # Also reached through send_error() for requests that never got to _dispatch (bad syntax, POST).
        url = urlsplit(getattr(self, "path", "") or "")
        headers = getattr(self, "headers", None) or {}
        self.server.hub._record(
            RecordedRequest(
                server=self.server.role,
                method=getattr(self, "command", None) or "",
                path=unquote(url.path),
                query=url.query,
                status=int(code),
                authorized=headers.get("Authorization") is not None,
                range=headers.get("Range"),
                repo_id=self._repo_id,
                filename=self._filename,
            )
        )
        super().send_response(code, message)

    def _send_error(self, error: _HttpError) -> None:
        body = json.dumps({"error": error.message}).encode()
        self.send_response(error.status)
        if error.code is not None:
            self.send_header("X-Error-Code", error.code)
        self.send_header("X-Error-Message", error.message)
        for name, value in error.headers.items():
            self.send_header(name, value)
        self._finish_headers(body, "application/json")

    def _send_json(self, payload: object, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self._finish_headers(body, "application/json")

    def _finish_headers(self, body: bytes, content_type: str) -> None:
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self._send_body:
            self.wfile.write(body)

    def _send_redirect(self, repo: FakeRepo, file: FakeFile, headers: dict[str, str]) -> None:
        self.send_response(302)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Location", self.server.hub.cdn_url(repo, file))
        self.send_header("ETag", f'"{file.sha256}"')
        self.send_header("X-Linked-Etag", f'"{file.sha256}"')
        self.send_header("X-Linked-Size", str(file.size))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_file(self, file: FakeFile, headers: dict[str, str]) -> None:
        start, end = self._byte_range(file.size)
        partial = (start, end) != (0, file.size)
        self.send_response(206 if partial else 200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Accept-Ranges", "bytes")
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{file.size}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self._send_body:
            self._write_body(file, start, end)

    def _write_body(self, file: FakeFile, start: int, end: int) -> None:
        cut = self._drop_point(file, start, end)
        self.wfile.write(file.content[start : end if cut is None else cut])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _drop_point(self, file: FakeFile, start: int, end: int) -> int | None:
        """Where a DropConnection fault cuts this body, if one acts on it."""
        assert self._repo_id is not None
        fault = self.server.hub.claim_fault(DropConnection, self._repo_id, file.path, end=end)
        return None if fault is None else max(start, fault.after_bytes)

    def _byte_range(self, size: int) -> tuple[int, int]:
        """The [start, end) slice asked by the Range header; 416 when it is unsatisfiable."""
        header = self.headers.get("Range")
        match = _RANGE.match(header.strip()) if header else None
        if match is None or match.groups() == ("", ""):
            return 0, size
        first, last = match.groups()
        if first == "":
            start, end = max(size - int(last), 0), size
        else:
            start, end = int(first), min(int(last) + 1, size) if last else size
        if start >= size or start >= end:
            raise _HttpError(416, "Requested Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})
        return start, end

    def _send_tree(self, repo: FakeRepo, path: str) -> None:
        entries = _tree_entries(repo, path, recursive=self._flag("recursive"))
        if entries is None:
            raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": repo.sha})
        offset = int(self._query.get("cursor", "0"))
        page = entries[offset : offset + self.server.hub.tree_page_size]
        headers = {}
        if offset + len(page) < len(entries):
            query = {**self._query, "cursor": str(offset + len(page))}
            base = f"{self.server.hub.endpoint}{quote(urlsplit(self.path).path)}"
            headers["Link"] = f'<{base}?{urlencode(query)}>; rel="next"'
        self._send_json(page, headers)


def _gated_error(repo: FakeRepo, anonymous: bool, headers: dict[str, str]) -> _HttpError:
    if anonymous:
        message = (
            f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
            "authenticated to access it. Please log in."
        )
        return _HttpError(401, message, "GatedRepo", headers)
    message = (
        f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
        f"Visit https://huggingface.co/{repo.repo_id} to ask for access."
    )
    return _HttpError(403, message, "GatedRepo", headers)


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


__all__ = [
    "DEFAULT_LFS_PATTERNS",
    "DropConnection",
    "FakeFile",
    "FakeHub",
    "FakeRepo",
    "Fault",
    "RecordedRequest",
]
