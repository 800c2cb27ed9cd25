"""An httpx2 transport that connects only to addresses the address policy checked: DNS-rebinding-proof.

Checking a URL's host and then letting the HTTP library connect by name resolves the name twice; a DNS
server that answers a public address to the first lookup and 127.0.0.1 to the second (rebinding) gets
the connection into the loopback network anyway. Here the check and the connection share one lookup:
`PinnedNetworkBackend.connect_tcp`, which httpcore2 calls for every new connection (the first URL's and
each redirect's), asks `AddressPolicy.addresses` to resolve and check the name, then dials those
addresses and nothing else. The name stays what httpcore2 uses for everything else: the Host header
comes from the URL, and TLS is started by httpcore2 on the returned stream with `server_hostname` set to
the URL's host, so SNI and certificate verification are for the name, as without pinning.

Every stream the backend returns is a `PacedStream`: each read (and the TLS handshake, each write) waits no
longer than the deadline of the download running in this thread (`pace.running()`), and each read's bytes
count toward its minimum rate, headers included, so a server cannot drip its headers any more than its body.

`GuardedTransport` is an httpx2 transport over an httpcore2 connection pool with that backend, mapping
httpcore2's errors to httpx2's like httpx2's own transport does, so retry code sees the usual
`httpx2.TransportError` family; the pace's own errors (`TooSlow`) and the policy's final answers
(`AddressRefused`, `UnknownHost`) pass through as they are. Proxies are not
used: through a proxy the proxy resolves the name, and no check here could hold (the client is built with
`trust_env=False`, see `client.make_client`).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterable, Iterator

import httpcore2
import httpx2

from .errors import ResolutionFailed, UnknownHost
from .pace import running
from .policy import AddressPolicy, no_such_name

# Most specific first: the first match wins.
_ERRORS: tuple[tuple[type[Exception], type[httpx2.TransportError]], ...] = (
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.ProxyError, httpx2.ProxyError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        for core, mapped in _ERRORS:
            if isinstance(error, core):
                raise mapped(str(error)) from error
        raise


class PinnedNetworkBackend(httpcore2.NetworkBackend):
    """Dials only the addresses `policy` resolved and allowed for the host; `inner` does the dialing."""

    def __init__(self, policy: AddressPolicy, inner: httpcore2.NetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore2.NetworkStream:
        if self.policy.allow_private:  # nothing to pin: let the system connect by name
            try:
                return PacedStream(self._dial(host, port, timeout, local_address, socket_options))
            except httpcore2.ConnectError as error:
                if no_such_name(error.__cause__):  # what the policy says when it resolves (below)
                    raise UnknownHost(self.policy.subject, host) from None
                raise
        try:
            # AddressRefused when any of them is refused, UnknownHost when the name does not exist: both final
            addresses = self.policy.addresses(host, port)
        except UnknownHost:
            raise
        except ResolutionFailed as error:  # as when connecting by name: a connect error, retried
            raise httpcore2.ConnectError(str(error)) from error
        last_error: Exception | None = None
        for address in addresses:
            try:
                return PacedStream(self._dial(str(address), port, timeout, local_address, socket_options))
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as error:
                last_error = error  # the next address, as socket.create_connection does
        assert last_error is not None  # addresses() never returns an empty list
        raise last_error

    def _dial(self, host: str, port: int, timeout, local_address, socket_options) -> httpcore2.NetworkStream:
        watch = running()
        if watch is not None:
            timeout = watch.clip(timeout)
        try:
            return self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        except httpcore2.ConnectTimeout:
            if watch is not None:
                watch.check_deadline()  # the deadline, not the host, ended the wait
            raise

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise httpcore2.UnsupportedProtocol("Unix sockets are not used for downloads.")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class PacedStream(httpcore2.NetworkStream):
    """A connection's stream that answers to the download running in this thread, if any (`pace.running()`):
    no wait outlasts its deadline, and every byte read counts toward its minimum rate."""

    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        watch = running()
        if watch is None:
            return self.inner.read(max_bytes, timeout)
        try:
            data = self.inner.read(max_bytes, watch.clip(timeout))
        except httpcore2.ReadTimeout:
            watch.check_deadline()  # the deadline, not the server's silence, ended the wait
            raise
        watch.arrived(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        watch = running()
        self.inner.write(buffer, timeout if watch is None else watch.clip(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout=None):
        watch = running()
        timeout = timeout if watch is None else watch.clip(timeout)
        return PacedStream(self.inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str):
        return self.inner.get_extra_info(info)


class _ResponseStream(httpx2.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class GuardedTransport(httpx2.BaseTransport):
    """httpx2 transport whose every request checks the scheme and whose every connection is pinned."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        ssl_context: ssl.SSLContext | None = None,
        network_backend: httpcore2.NetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self._pool = httpcore2.ConnectionPool(
            ssl_context=ssl_context or httpx2.create_ssl_context(),
            max_connections=20,
            max_keepalive_connections=10,
            keepalive_expiry=5.0,
            network_backend=PinnedNetworkBackend(policy, network_backend),
        )

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.policy.check_scheme(request.url.scheme)
        assert isinstance(request.stream, httpx2.SyncByteStream)
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = self._pool.handle_request(core_request)
        assert isinstance(response.stream, Iterable)
        return httpx2.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()
