"""Fake LoRA download sites on loopback, over the fake-server core (core.py): a plain file host, CivitAI
and Replicate, and the tiny files they serve.

`FakeServer` is a plain host with a route table. Routes serve files (ETag, `Accept-Ranges`, 206 answers to
`Range`/`If-Range`, or a host that ignores ranges), JSON, HTML pages, redirects and errors; they can demand
a bearer token, refuse any Authorization header (what S3 does to a presigned URL that also carries one),
demand a signature in the query, or wait before answering (so that concurrent callers overlap). Faults
(faults.py), each for `times` requests of one path: `drop_connection` cuts the body at a byte offset;
`stall` sends part of the body and then nothing (until the fault's time is up or the server is reset);
`drip` sends the body a few bytes at a time, slowly (until it ends or the server is reset);
`fail` answers an error status instead; `wrong_length` announces a Content-Length other than the body's.
The core records every request with its Authorization and Host headers.

`FakeCivitai` and `FakeReplicate` put the sites' routes on two servers each, an API site and a storage
host it redirects to, as the real ones do:
- CivitAI: `/api/v1/models/<id>`, `/api/v1/model-versions/<id>`, `/api/download/models/<id>` (307 to
  signed storage that rejects Authorization).
- Replicate: `/<owner>/<model>[/versions/<v>]/_weights` (307 to a replicate.delivery-like tar URL).

`lora_bytes`, `trainer_tar` and `make_tar` build tiny valid safetensors files and the Replicate trainer's tar.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from testkit.fakes.core import FakeSite, FileReply, RecordedRequest, Reply, Request, error, s3_error
from testkit.fakes.faults import Drip, DropConnection, FailWith, Stall, WrongLength

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


# -- a plain file host ----------------------------------------------------------------------------------------


@dataclass
class Route:
    """What a plain server answers on one path."""

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

    def answer(self, request: Request) -> Reply | FileReply:
        self._check_credentials(request)
        headers = {"Content-Type": self.content_type, **self.headers}
        if self.file:
            return FileReply(self.body, request.path, headers, self.etag, self.ranges)
        if self.location is not None:
            headers["Location"] = self.location
        return Reply(self.status, self.body, headers)

    def _check_credentials(self, request: Request) -> None:
        auth = request.authorization
        if self.token is not None and auth != f"Bearer {self.token}":
            raise error(401, "Unauthorized")
        if self.reject_auth and auth is not None:
            # What S3 answers to a presigned URL that also carries an Authorization header.
            raise s3_error(400, "InvalidArgument", "Only one auth mechanism allowed")
        if self.signature is not None and request.query.get("sig") != self.signature:
            raise s3_error(403, "SignatureDoesNotMatch")


class FakeServer(FakeSite):
    """A plain file host on loopback: a table of exact-path routes, and the faults of faults.py by path."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Route] = {}

    def answer(self, request: Request) -> Reply | FileReply:
        route = self.routes.get(request.path)
        if route is None:
            raise error(404, "Not found")
        if route.delay:
            time.sleep(route.delay)  # before any byte: concurrent callers overlap, a long one is a silent host
        return self.failure(request.path) or route.answer(request)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def reset(self) -> None:
        """Forget routes, faults and requests: one server can then serve many tests."""
        super().reset()
        self.routes.clear()

    def gets(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "GET" and r.path == path]

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

    # -- faults ----------------------------------------------------------------------------------

    def drop_connection(self, path: str, after_bytes: int, times: int | None = 1) -> DropConnection:
        return self.inject(DropConnection(target=path, after_bytes=after_bytes, times=times))

    def stall(self, path: str, after_bytes: int, seconds: float = 30.0, times: int | None = 1) -> Stall:
        return self.inject(Stall(target=path, after_bytes=after_bytes, seconds=seconds, times=times))

    def drip(self, path: str, bytes_per_tick: int = 1, interval: float = 0.5, times: int | None = 1) -> Drip:
        return self.inject(Drip(target=path, bytes_per_tick=bytes_per_tick, interval=interval, times=times))

    def wrong_length(self, path: str, announced: int | None, times: int | None = 1) -> WrongLength:
        return self.inject(WrongLength(target=path, announced=announced, times=times))

    def fail(self, path: str, status: int, times: int = 1, headers: dict[str, str] | None = None) -> FailWith:
        return self.inject(FailWith(target=path, status=status, times=times, headers=dict(headers or {})))


class _ApiAndStorage:
    """An API site on `site` whose downloads redirect to a storage host on `storage`, as CivitAI's and
    Replicate's do. `token`, when set, is demanded by the API routes added while it is set."""

    def __init__(self, token: str | None = None) -> None:
        self.site = FakeServer().start()
        self.storage = FakeServer().start()
        self.token = token

    @property
    def base_url(self) -> str:
        return self.site.base_url

    @property
    def servers(self) -> tuple[FakeServer, FakeServer]:
        return self.site, self.storage

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def reset(self, token: str | None = None) -> None:
        for server in self.servers:
            server.reset()
        self.token = token


# -- CivitAI -------------------------------------------------------------------------------------------


@dataclass
class FakeVersion:
    """One version of a fake CivitAI model: its file and what the API says of it."""

    id: int
    content: bytes
    base_model: str = "Flux.1 D"
    trained_words: list[str] = field(default_factory=list)
    file_name: str = "lora.safetensors"
    name: str = "v1.0"
    pickle_only: bool = False  # the only file is a PickleTensor (.pt)


class FakeCivitai(_ApiAndStorage):
    """The CivitAI API on `site`, its signed file storage on `storage`."""

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


class FakeReplicate(_ApiAndStorage):
    """Replicate's `_weights` endpoints on `site`, redirecting to tars on `delivery` (its storage host)."""

    @property
    def delivery(self) -> FakeServer:
        return self.storage

    def add_model(self, owner: str, model: str, tar: bytes, version: str | None = None) -> str:
        """Serve `tar` as the model's (or the version's) weights; returns the delivery URL."""
        digest = hashlib.sha256(tar).hexdigest()[:24]
        delivered = self.delivery.add_file(f"/pbxt/{digest}/trained_model.tar", tar)
        self.site.add_redirect(_weights_path(owner, model, version), delivered, token=self.token)
        return delivered

    def weights_url(self, owner: str, model: str, version: str | None = None) -> str:
        """The delivery URL of a model's weights (what `_weights` redirects to; what COG_WEIGHTS is given)."""
        location = self.site.routes[_weights_path(owner, model, version)].location
        assert location is not None
        return location


def _weights_path(owner: str, model: str, version: str | None) -> str:
    return f"/{owner}/{model}/versions/{version}/_weights" if version else f"/{owner}/{model}/_weights"
