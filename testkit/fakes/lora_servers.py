"""Fake LoRA download sites on loopback: a generic file server, CivitAI, Replicate, and test data.

`FakeServer` is a real HTTP/1.1 server on 127.0.0.1 with a route table. Routes serve files (with ETag,
`Accept-Ranges` and 206 answers to `Range`/`If-Range`, or a server that ignores ranges), JSON, redirects
and errors; they can demand a bearer token, refuse any Authorization header (what S3 does to a
presigned URL that also carries one), demand a signature in the query, or wait before the body (so
that concurrent callers overlap). Faults, each for `times` requests: `drop_connection` cuts the body at
a byte offset; `stall` sends part of the body and then nothing (until the fault's time is up or the
server is reset); `fail` answers an error status instead; `wrong_length` announces a Content-Length
other than the body's. Every request is recorded, with the Authorization header's value (tests check
which token arrived where) and the Host header (tests of address pinning check the name arrived).

`FakeCivitai` and `FakeReplicate` put the sites' routes on two servers each, an API site and a storage
host it redirects to, as the real ones do:
- CivitAI: `/api/v1/models/<id>`, `/api/v1/model-versions/<id>`, `/api/download/models/<id>` (307 to
  signed storage that rejects Authorization).
- Replicate: `/<owner>/<model>[/versions/<v>]/_weights` (307 to a replicate.delivery-like tar URL).

`lora_bytes` and `trainer_tar` build tiny valid safetensors files and the Replicate trainer's tar.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import sys
import tarfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

# -- test data -------------------------------------------------------------------------------------


def lora_bytes(seed: int = 0, metadata: Mapping[str, str] | None = None, rank: int = 4, padding: int = 0) -> bytes:
    """A small valid safetensors file of LoRA-shaped tensors; `seed` makes distinct contents."""
    import torch
    from safetensors.torch import save

    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(rank, 64, generator=generator),
        "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(64, rank, generator=generator),
    }
    if padding:
        tensors["padding"] = torch.zeros(padding // 4)
    return save(tensors, metadata=dict(metadata) if metadata else None)


def trainer_tar(lora: bytes, trigger_word: str | None = "TOK", extra: Mapping[str, bytes] | None = None) -> bytes:
    """The tar Replicate's flux trainer publishes: lora.safetensors, ai-toolkit config.yaml, captions."""
    folder = "output/flux_train_replicate"
    config = "job: custom_job\nconfig:\n  name: flux_train_replicate\n  process:\n    - type: custom_sd_trainer\n"
    if trigger_word is not None:
        config += f"      trigger_word: {trigger_word}\n"
    members = {
        f"{folder}/lora.safetensors": lora,
        f"{folder}/config.yaml": config.encode(),
        f"{folder}/captions/photo-1.txt": f"a photo of {trigger_word}".encode(),
    }
    return make_tar({**members, **(extra or {})})


def make_tar(members: Mapping[str, bytes], gzip: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# -- the generic server ------------------------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    file: bool = False  # serve `body` as a file: ETag, Accept-Ranges, Range
    ranges: bool = True  # False: ignore Range and never advertise it
    location: str | None = None  # a redirect
    token: str | None = None  # demand `Authorization: Bearer <token>`
    reject_auth: bool = False  # answer 400 to any Authorization header (S3 presigned URLs)
    signature: str | None = None  # demand `?sig=<signature>`
    delay: float = 0.0  # seconds to wait before answering

    @property
    def etag(self) -> str:
        return f'"{hashlib.sha256(self.body).hexdigest()[:32]}"'


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    authorization: str | None
    range: str | None
    if_range: str | None
    status: int
    host: str | None = None


@dataclass(kw_only=True)
class Fault:
    """Something that goes wrong on requests for `path`, `times` times (None: until reset)."""

    path: str
    times: int | None = 1
    hits: int = 0

    def applies(self, **context: int) -> bool:
        return True


@dataclass(kw_only=True)
class Stall(Fault):
    """Send the headers and `after_bytes` of the body, then go silent for `seconds` and hang up."""

    after_bytes: int
    seconds: float


@dataclass(kw_only=True)
class WrongLength(Fault):
    """Announce `announced` as the Content-Length (None: no Content-Length at all) while sending the real
    body, then hang up."""

    announced: int | None


@dataclass(kw_only=True)
class DropConnection(Fault):
    """Close the connection once the body reaches byte `after_bytes`; a shorter body goes through whole."""

    after_bytes: int

    def applies(self, *, end: int, **context: int) -> bool:
        return self.after_bytes < end


@dataclass(kw_only=True)
class FailWith(Fault):
    """Answer `status` instead of the route, `times` times (a 503 during a deploy, a 429 burst)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Retry-After


FaultT = TypeVar("FaultT", bound=Fault)


_RANGE = re.compile(r"bytes=(\d+)-$")
_NO_LENGTH = -1  # send no Content-Length: the body ends when the connection closes


class FakeServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.faults: list[Fault] = []
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._released = threading.Event()  # ends every stall at once: on reset() and close()
        self._server: _Server | None = None

    def start(self) -> FakeServer:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def close(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def reset(self) -> None:
        """Forget routes, faults and requests: one server can then serve many tests."""
        self._released.set()
        with self._lock:
            self.routes.clear()
            self.faults.clear()
            self._requests.clear()
        self._released = threading.Event()

    # -- routes ----------------------------------------------------------------------------------

    def add_file(self, path: str, content: bytes, **options) -> str:
        self.routes[path] = Route(body=content, file=True, **options)
        return self.url(path)

    def add_json(self, path: str, payload: object, status: int = 200, **options) -> str:
        self.routes[path] = Route(status, json.dumps(payload).encode(), "application/json", **options)
        return self.url(path)

    def add_page(self, path: str, body: bytes, status: int = 200, content_type: str = "text/html") -> str:
        self.routes[path] = Route(status, body, content_type)
        return self.url(path)

    def add_redirect(self, path: str, location: str, status: int = 307, **options) -> str:
        self.routes[path] = Route(status, location=location, **options)
        return self.url(path)

    def drop_connection(self, path: str, after_bytes: int, times: int | None = 1) -> DropConnection:
        return self.inject(DropConnection(path=path, after_bytes=after_bytes, times=times))

    def stall(self, path: str, after_bytes: int, seconds: float = 30.0, times: int | None = 1) -> Stall:
        return self.inject(Stall(path=path, after_bytes=after_bytes, seconds=seconds, times=times))

    def wrong_length(self, path: str, announced: int | None, times: int | None = 1) -> WrongLength:
        return self.inject(WrongLength(path=path, announced=announced, times=times))

    def fail(self, path: str, status: int, times: int = 1, headers: dict[str, str] | None = None) -> FailWith:
        return self.inject(FailWith(path=path, status=status, times=times, headers=dict(headers or {})))

    def inject(self, fault: FaultT) -> FaultT:
        with self._lock:
            self.faults.append(fault)
        return fault

    def wait_released(self, seconds: float) -> None:
        self._released.wait(seconds)

    # -- records ---------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def gets(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "GET" and r.path == path]

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def claim(self, kind: type[FaultT], path: str, **context: int) -> FaultT | None:
        """The first fault of `kind` that acts on this request, counted as hit; None if none does."""
        with self._lock:
            for fault in self.faults:
                usable = fault.times is None or fault.hits < fault.times
                if isinstance(fault, kind) and fault.path == path and usable and fault.applies(**context):
                    fault.hits += 1
                    return fault
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeServer

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return  # a client that gave up mid-answer (a size cap, a timeout): what those tests want
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        url = urlsplit(self.path)
        route = self.server.fake.routes.get(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        status, body, headers = self._answer(route, query)
        if status in (200, 206) and route is not None and route.file:
            self._send_file(route, url.path, status, body, headers, send_body)
            return
        self._send(url, status, headers, body if send_body else b"")

    def _answer(self, route: Route | None, query: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        auth = self.headers.get("Authorization")
        if route is None:
            return 404, b'{"error": "Not found"}', {"Content-Type": "application/json"}
        if route.delay:
            time.sleep(route.delay)
        failure = self.server.fake.claim(FailWith, urlsplit(self.path).path)
        if failure is not None:
            page = b"<html><body>Service Unavailable</body></html>"
            return failure.status, page, {"Content-Type": "text/html", **failure.headers}
        if route.token is not None and auth != f"Bearer {route.token}":
            return 401, b'{"error": "Unauthorized"}', {"Content-Type": "application/json"}
        if route.reject_auth and auth is not None:
            return 400, b"<Error><Code>InvalidArgument</Code>Only one auth mechanism allowed</Error>", {}
        if route.signature is not None and query.get("sig") != route.signature:
            return 403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>", {}
        headers = {"Content-Type": route.content_type, **route.headers}
        if route.location is not None:
            headers["Location"] = route.location
        return route.status, route.body, headers

    def _send(self, url, status: int, headers: dict[str, str], body: bytes, length: int | None = None) -> None:
        self.server.fake.record(
            RecordedRequest(
                self.command,
                url.path,
                url.query,
                self.headers.get("Authorization"),
                self.headers.get("Range"),
                self.headers.get("If-Range"),
                status,
                self.headers.get("Host"),
            )
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if length != _NO_LENGTH:
            self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, route: Route, path: str, status: int, body: bytes, headers: dict, send_body: bool) -> None:
        start = self._range_start(route, len(body))
        headers = dict(headers)
        if route.ranges:
            headers |= {"Accept-Ranges": "bytes", "ETag": route.etag}
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        part = body[start:]
        url = urlsplit(self.path)
        if send_body and self._faulty_send(url, path, status, headers, part):
            return
        fault = self.server.fake.claim(DropConnection, path, end=len(body)) if send_body else None
        cut = None if fault is None else max(fault.after_bytes - start, 0)
        if cut is None:
            self._send(url, status, headers, part if send_body else b"", len(part))
            return
        self._send(url, status, headers, part[:cut], len(part))
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _faulty_send(self, url, path: str, status: int, headers: dict, part: bytes) -> bool:
        """Serve a stall or a wrong Content-Length when one is due; True when it did."""
        fake = self.server.fake
        stall = fake.claim(Stall, path)
        if stall is not None:
            self._send(url, status, headers, part[: stall.after_bytes], len(part))
            self.wfile.flush()
            fake.wait_released(stall.seconds)
            self._hang_up()
            return True
        wrong = fake.claim(WrongLength, path)
        if wrong is not None:
            self._send(url, status, headers, part, _NO_LENGTH if wrong.announced is None else wrong.announced)
            self.wfile.flush()
            self._hang_up()
            return True
        return False

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client left first

    def _range_start(self, route: Route, size: int) -> int:
        match = _RANGE.match(self.headers.get("Range", "").strip())
        if not route.ranges or match is None:
            return 0
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range != route.etag:
            return 0  # the file changed: the whole file, as RFC 9110 says
        start = int(match.group(1))
        return start if start < size else 0


# -- CivitAI -------------------------------------------------------------------------------------------


@dataclass
class FakeVersion:
    id: int
    content: bytes
    base_model: str = "Flux.1 D"
    trained_words: list[str] = field(default_factory=list)
    file_name: str = "lora.safetensors"
    name: str = "v1.0"
    pickle_only: bool = False  # the only file is a PickleTensor (.pt)


class FakeCivitai:
    """The CivitAI API on `site`, its signed file storage on `storage`."""

    def __init__(self, token: str | None = None) -> None:
        self.site = FakeServer().start()
        self.storage = FakeServer().start()
        self.token = token  # when set, the API and the download endpoint demand it

    @property
    def base_url(self) -> str:
        return self.site.base_url

    def close(self) -> None:
        self.site.close()
        self.storage.close()

    def reset(self, token: str | None = None) -> None:
        self.site.reset()
        self.storage.reset()
        self.token = token

    def add_model(self, model_id: int, versions: list[FakeVersion], name: str = "Test LoRA", type: str = "LORA"):
        model = {"id": model_id, "name": name, "type": type, "modelVersions": [self._version(v) for v in versions]}
        self.site.add_json(f"/api/v1/models/{model_id}", model, token=self.token)
        for version in versions:
            detail = {**self._version(version), "modelId": model_id, "model": {"name": name, "type": type}}
            self.site.add_json(f"/api/v1/model-versions/{version.id}", detail, token=self.token)
            signature = hashlib.sha256(version.content).hexdigest()[:16]
            stored = f"/files/{version.id}/{version.file_name}"
            self.storage.add_file(stored, version.content, reject_auth=True, signature=signature)
            target = self.storage.url(f"{stored}?sig={signature}&X-Amz-Credential=fake")
            self.site.add_redirect(f"/api/download/models/{version.id}", target, token=self.token)

    def _version(self, version: FakeVersion) -> dict:
        download = f"{self.base_url}/api/download/models/{version.id}"
        fmt = "PickleTensor" if version.pickle_only else "SafeTensor"
        name = version.file_name.replace(".safetensors", ".pt") if version.pickle_only else version.file_name
        file = {
            "name": name,
            "type": "Model",
            "primary": True,
            "sizeKB": len(version.content) / 1024,
            "metadata": {"format": fmt, "fp": "fp16", "size": "full"},
            "hashes": {"SHA256": hashlib.sha256(version.content).hexdigest().upper()},
            "downloadUrl": f"{download}?type=Model&format={fmt}",
        }
        training_data = {"name": "training.zip", "type": "Training Data", "metadata": {"format": "Other"}}
        return {
            "id": version.id,
            "name": version.name,
            "baseModel": version.base_model,
            "trainedWords": version.trained_words,
            "downloadUrl": download,
            "files": [training_data | {"downloadUrl": f"{download}?type=Training%20Data"}, file],
        }


# -- Replicate ------------------------------------------------------------------------------------------


class FakeReplicate:
    """Replicate's `_weights` endpoints on `site`, redirecting to tars on `delivery`."""

    def __init__(self, token: str | None = None) -> None:
        self.site = FakeServer().start()
        self.delivery = FakeServer().start()
        self.token = token

    @property
    def base_url(self) -> str:
        return self.site.base_url

    def close(self) -> None:
        self.site.close()
        self.delivery.close()

    def reset(self, token: str | None = None) -> None:
        self.site.reset()
        self.delivery.reset()
        self.token = token

    def add_model(self, owner: str, model: str, tar: bytes, version: str | None = None) -> str:
        """Serve `tar` as the model's (or the version's) weights; returns the delivery URL."""
        digest = hashlib.sha256(tar).hexdigest()[:24]
        delivered = self.delivery.add_file(f"/pbxt/{digest}/trained_model.tar", tar)
        suffix = f"/versions/{version}" if version else ""
        self.site.add_redirect(f"/{owner}/{model}{suffix}/_weights", delivered, token=self.token)
        return delivered


# -- a fetch in another process (multiprocessing needs an importable target) ---------------------------


def fetch_in_process(cache_dir: str, environ: dict[str, str], source: str, barrier, results) -> None:
    from pathlib import Path

    from lora_loader import LoraFetcher, LoraSettings

    settings = LoraSettings.from_env(environ)
    fetcher = LoraFetcher(Path(cache_dir), settings.max_bytes, settings)
    barrier.wait(timeout=30)
    lora = fetcher.fetch(source)
    results.put((str(lora.path), lora.sha256, lora.key))


def fetch_many_in_process(
    cache_dir: str, environ: dict[str, str], sources: list[tuple[str, str]], in_use_seconds: float, barrier, results
) -> None:
    """Fetch each (source, expected sha256) in turn, reading every file back at once; report what was wrong."""
    from pathlib import Path

    from lora_loader import LoraFetcher, LoraSettings

    settings = LoraSettings.from_env(environ)
    fetcher = LoraFetcher(Path(cache_dir), settings.max_bytes, settings, in_use_seconds=in_use_seconds)
    problems = []
    barrier.wait(timeout=30)
    for source, expected in sources:
        try:
            lora = fetcher.fetch(source)
            with lora.path.open("rb") as f:  # what the adapter loader does next
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest != expected or lora.sha256 != expected:
                problems.append(f"{source}: got {digest}, sidecar {lora.sha256}")
        except Exception as error:  # reported to the test, which shows it
            problems.append(f"{source}: {type(error).__name__}: {error}")
    results.put(problems)
