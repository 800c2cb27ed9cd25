"""The one fake-server core under every fake site: real HTTP/1.1 servers on 127.0.0.1 with a request log,
injectable faults and file serving (Range, If-Range, ETag, Content-Length).

A fake site subclasses `FakeSite` and implements `answer(request)`: it returns a `Reply` (status, headers,
body), a `FileReply` (bytes served as a file), or raises `Refused` from any depth with the reply to send
instead. Everything else is here, once:

- Listeners: one threaded server per role in `roles` (most sites have one; the Hub has a second that plays
  its CDN), each on an ephemeral loopback port, all sharing the site's state, log and faults. HTTP/1.1
  keep-alive (httpx2 and huggingface_hub pool connections), TCP_NODELAY, and `close()` cuts the keep-alive
  connections still open so no handler thread outlives the site.
- The request log: every answer is recorded as it starts, so a client that got its answer always finds it
  logged, with the Authorization, Range, If-Range and Host headers as sent (tests check which token
  reached which host, how a download resumed, that a pinned address kept its name).
- File serving: 200 or 206 for `bytes=a-b`, `bytes=a-` and `bytes=-n`, 416 past the end, If-Range
  honoured (a validator that no longer matches gets the whole file, as RFC 9110 says), `ranges=False` for
  a server that neither advertises nor honours ranges.
- Faults (`faults.py`): the body faults act here on every `FileReply`, by its `target`; `failure()` gives
  a fake the answer of a due `FailWith`.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.client import responses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from testkit.fakes.faults import Drip, DropConnection, FailWith, Fault, FaultT, Stall, WrongLength

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_NO_LENGTH = -1  # send no Content-Length: the body ends when the connection closes


def free_port() -> int:
    """A loopback port nothing listens on now: for a server started later, or an endpoint that must refuse."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- what a fake sees and answers ----------------------------------------------------------------------------


@dataclass
class Request:
    """One request as a fake answers it.

    A fake whose URLs name a repo file (the Hub) sets `repo_id` and `filename` while answering, before any
    check that may refuse it, so that the log says what every request asked for.
    """

    server: str  # the role of the listener it reached
    method: str
    target: str  # the path as sent, still %-encoded (the Hub splits it before decoding)
    query: dict[str, str]  # the last value of each parameter
    headers: Message
    repo_id: str | None = None
    filename: str | None = None

    @property
    def path(self) -> str:
        return unquote(self.target)

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


@dataclass
class FileReply:
    """`content` served as a file; `target` is what faults name it by (see faults.py)."""

    content: bytes
    target: Hashable
    headers: dict[str, str] = field(default_factory=dict)  # Content-Type defaults to octet-stream
    etag: str | None = None  # a quoted strong validator, sent with `Accept-Ranges` and checked by If-Range
    ranges: bool = True  # False: ignore Range and advertise neither ranges nor a validator

    def span(self, headers: Message) -> tuple[int, int]:
        """The [start, end) slice the request's Range asks for; `Refused` (416) when it is unsatisfiable."""
        size = len(self.content)
        header = headers.get("Range") if self.ranges else None
        match = _RANGE.match(header.strip()) if header else None
        if match is None or match.groups() == ("", ""):
            return 0, size
        if_range = headers.get("If-Range")
        if if_range is not None and if_range != self.etag:
            return 0, size  # the file changed since the client's first part: the whole file
        first, last = match.groups()
        if first == "":
            start, end = max(size - int(last), 0), size
        else:
            start, end = int(first), min(int(last) + 1, size) if last else size
        if start >= size or start >= end:
            raise error(416, "Requested Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
        return start, end


class Refused(Exception):
    """Raised anywhere while answering: `reply` is sent instead of the answer."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Refused:
    """A JSON error answer, `{"error": message}`, as the Hub's and CivitAI's APIs give."""
    return Refused(Reply.json({"error": message}, status, headers))


def s3_error(status: int, code: str, message: str = "") -> Refused:
    """An error of an S3-like storage host (the CDN and download hosts the sites redirect to)."""
    body = f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    return Refused(Reply(status, body.encode(), {"Content-Type": "application/xml"}))


@dataclass(frozen=True)
class RecordedRequest:
    server: str  # the role of the listener that answered ("site"; the Hub's "hub" or "cdn")
    method: str
    path: str  # URL-decoded, without the query
    query: str
    status: int
    authorization: str | None  # the header's value: tests check which token reached which host
    range: str | None
    if_range: str | None
    host: str | None
    repo_id: str | None = None  # the repo and file a Hub request named
    filename: str | None = None

    @property
    def authorized(self) -> bool:
        return self.authorization is not None


# -- the site ------------------------------------------------------------------------------------------------


class FakeSite:
    """A fake site: its listeners, request log and faults. Subclasses answer requests (`answer`)."""

    roles: tuple[str, ...] = ("site",)

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._released = threading.Event()  # ends every stall at once: on reset() and close()
        self._listeners: dict[str, _Listener] = {}
        self._connections: set[socket.socket] = set()

    def answer(self, request: Request) -> Reply | FileReply:
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> Self:
        for role in self.roles:
            listener = _Listener(self, role)
            threading.Thread(target=listener.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
            self._listeners[role] = listener
        return self

    def close(self) -> None:
        self.release_stalls()
        listeners = list(self._listeners.values())
        self._listeners.clear()
        for listener in listeners:
            listener.shutdown()
        # Keep-alive connections would otherwise hold their handler threads until the client hangs up.
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            _shut(conn)
        for listener in listeners:
            listener.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url_of(self, role: str) -> str:
        """The base URL of the listener playing `role`."""
        assert role in self._listeners, "start() the site first"
        host, port = self._listeners[role].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        return self.url_of(self.roles[0])

    def reset(self) -> None:
        """Forget faults and requests (subclasses also forget what they serve): one site serves many tests."""
        self.release_stalls()
        with self._lock:
            self.faults.clear()
            self._requests.clear()

    # -- request log ---------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # -- faults --------------------------------------------------------------------------------------------

    def inject(self, fault: FaultT) -> FaultT:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def claim(self, kind: type[FaultT], target: Hashable, **context: int) -> FaultT | None:
        """The first fault of `kind` that acts on this request, counted as hit; None if none does."""
        with self._lock:
            for fault in self.faults:
                if isinstance(fault, kind) and fault.claim(target, **context):
                    return fault
        return None

    def failure(self, target: Hashable) -> Reply | None:
        """The answer of a `FailWith` due on `target`: a proxy's HTML error page, as a real outage shows."""
        fault = self.claim(FailWith, target)
        if fault is None:
            return None
        page = f"<html><body>{responses.get(fault.status, 'Error')}</body></html>".encode()
        return Reply(fault.status, page, {"Content-Type": "text/html", **fault.headers})

    def release_stalls(self) -> None:
        """End every stall now; later stalls wait again."""
        released, self._released = self._released, threading.Event()
        released.set()

    def _wait_released(self, seconds: float) -> bool:
        """Wait `seconds`, or less when the site releases its stalls (then True)."""
        return self._released.wait(seconds)

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


def _shut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the peer left first


# -- the HTTP plumbing ---------------------------------------------------------------------------------------


class _Listener(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, site: FakeSite, role: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.site, self.role = site, role

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return  # a client that gave up mid-answer (a size cap, a timeout): what those tests want
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Listener
    timeout = 30  # an idle keep-alive connection frees its thread eventually
    _request: Request | None = None
    _send_body = True

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the client's
        # delayed ACK stall every keep-alive response by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.site._track(self.connection, True)

    def finish(self) -> None:
        self.server.site._track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request log is the site's `requests`; stderr noise helps no one

    def handle_one_request(self) -> None:
        self._request = None  # a keep-alive connection's last request names nothing of this one
        super().handle_one_request()

    def do_GET(self) -> None:
        self._handle(send_body=True)

    def do_HEAD(self) -> None:
        self._handle(send_body=False)

    def _handle(self, send_body: bool) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self._request = Request(self.server.role, self.command, url.path, query, self.headers)
        self._send_body = send_body
        try:
            reply = self.server.site.answer(self._request)
            span = reply.span(self.headers) if isinstance(reply, FileReply) else None
        except Refused as refused:
            reply, span = refused.reply, None
        if isinstance(reply, FileReply):
            self._send_file(reply, *span)
        else:
            self._send(reply.status, reply.headers, reply.body)

    def send_response(self, code: int, message: str | None = None) -> None:
        # Recorded before any byte leaves, so a client that got its answer always finds it logged. Also
        # reached through send_error() for requests that never got to _handle (bad syntax, POST).
        self.server.site._record(self._recorded(int(code)))
        super().send_response(code, message)

    def _recorded(self, status: int) -> RecordedRequest:
        url = urlsplit(getattr(self, "path", "") or "")
        headers = getattr(self, "headers", None) or {}
        named = self._request
        return RecordedRequest(
            server=self.server.role,
            method=getattr(self, "command", None) or "",
            path=unquote(url.path),
            query=url.query,
            status=status,
            authorization=headers.get("Authorization"),
            range=headers.get("Range"),
            if_range=headers.get("If-Range"),
            host=headers.get("Host"),
            repo_id=named.repo_id if named else None,
            filename=named.filename if named else None,
        )

    def _send(self, status: int, headers: Mapping[str, str], body: bytes, length: int | None = None) -> None:
        """Status, headers, then the body unless HEAD; `length` overrides Content-Length (_NO_LENGTH: none)."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if length != _NO_LENGTH:
            self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self._send_body:
            self.wfile.write(body)

    def _send_file(self, reply: FileReply, start: int, end: int) -> None:
        size = len(reply.content)
        headers = {"Content-Type": "application/octet-stream", **reply.headers}
        if reply.ranges:
            headers["Accept-Ranges"] = "bytes"
            if reply.etag is not None:
                headers["ETag"] = reply.etag
        partial = (start, end) != (0, size)
        if partial:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        status, body = (206 if partial else 200), reply.content[start:end]
        if not (self._send_body and self._send_faulty(reply.target, status, headers, body, start, end)):
            self._send(status, headers, body)

    def _send_faulty(self, target: Hashable, status: int, headers: dict, body: bytes, start: int, end: int) -> bool:
        """Send the body the way a due body fault says, then hang up; False when none is due."""
        site = self.server.site
        if (stall := site.claim(Stall, target)) is not None:
            self._send(status, headers, body[: stall.after_bytes], len(body))
            site._wait_released(stall.seconds)
        elif (drip := site.claim(Drip, target)) is not None:
            self._send(status, headers, b"", len(body))
            for offset in range(0, len(body), drip.bytes_per_tick):
                if site._wait_released(drip.interval):
                    break
                self.wfile.write(body[offset : offset + drip.bytes_per_tick])
                self.wfile.flush()
        elif (wrong := site.claim(WrongLength, target)) is not None:
            self._send(status, headers, body, _NO_LENGTH if wrong.announced is None else wrong.announced)
        elif (drop := site.claim(DropConnection, target, end=end)) is not None:
            self._send(status, headers, body[: max(drop.after_bytes - start, 0)], len(body))
        else:
            return False
        self.wfile.flush()
        self.close_connection = True
        _shut(self.connection)
        return True
