"""What a stranger's URL or path can make the server read: the address policy with pinned connections
(DNS rebinding included), every redirect checked, local LoRA paths only from LORA_LOCAL_DIRS, size caps on
LoRA files, data: URIs, tar members and input images, and image URLs that Cog itself downloads.

Fake upstreams run on 127.0.0.1, which the default policy refuses: tests of the policy itself use a fake
resolver that maps names to chosen addresses, `trusted_networks` where 127.0.0.1 must stand in for a public
host, and a recording network backend that dials loopback only and shows which addresses were dialed.
"""

from __future__ import annotations

import base64
import gzip
import io
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpcore2
import pytest

from generation import input_urls
from generation.errors import UserInputError
from guarded_download import (
    AddressPolicy,
    AddressRefused,
    GaveUp,
    GuardedTransport,
    RetryPolicy,
    SizeLimit,
    Timeouts,
    UnknownHost,
    download,
    make_client,
)
from lora_loader import LoraError, LoraFetcher
from serverconfig import ServerConfig
from testkit.cog_server import CogServer
from testkit.fakes.hf_hub import FakeHub
from testkit.fakes.lora_servers import FakeServer, lora_bytes, make_tar
from testkit.helpers import digest, png_bytes

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
LORA = lora_bytes(41)
PUBLIC = "93.184.216.34"
LOOPBACK_ONLY = (ipaddress.ip_network("127.0.0.1/32"),)


class RecordingBackend(httpcore2.NetworkBackend):
    """Dials loopback for real and records every dial; a public address is 'unreachable' (no internet here)."""

    def __init__(self) -> None:
        self.dialed: list[str] = []
        self.inner = httpcore2.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.dialed.append(host)
        if not ipaddress.ip_address(host).is_loopback:
            raise httpcore2.ConnectError(f"{host} is unreachable from the test sandbox")
        return self.inner.connect_tcp(host, port, timeout, local_address, socket_options)


class SequenceResolver:
    """A DNS server whose answers change: the first lookup gets `first`, later ones `then`."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    def __call__(self, name: str, port: int) -> list[str]:
        self.lookups.append(name)
        sequence = self.answers[name]
        return sequence[min(self.lookups.count(name), len(sequence)) - 1]


def pinned_client(policy: AddressPolicy, backend: httpcore2.NetworkBackend, **transport_options):
    transport = GuardedTransport(policy, network_backend=backend, **transport_options)
    return make_client(policy, Timeouts(connect=2, read=2), transport=transport)


def fetch_url(client, url: str, dest: Path, limit: int = 10**9):
    return download(client, url, dest, headers={}, what="LoRA test", limit=SizeLimit(limit, "the test limit."),
                    retry=FAST_RETRY)  # fmt: skip


# -- connections go to the checked address only ----------------------------------------------------------


def test_dns_rebinding_cannot_steer_a_connection_to_loopback(files: FakeServer, tmp_path: Path) -> None:
    """The check sees a public address; a second lookup (what an unpinned client would do to connect)
    would answer 127.0.0.1, where the fake server listens. The request must never reach it."""
    files.add_file("/lora.safetensors", LORA)
    port = int(files.base_url.rsplit(":", 1)[1])
    resolver = SequenceResolver({"rebind.example": [[PUBLIC], ["127.0.0.1"]]})
    backend = RecordingBackend()
    policy = AddressPolicy(resolver=resolver)

    with pinned_client(policy, backend) as client, pytest.raises(AddressRefused) as caught:
        fetch_url(client, f"http://rebind.example:{port}/lora.safetensors", tmp_path / "x")

    assert files.requests == []
    assert backend.dialed == [PUBLIC]  # the checked address, never a name, never loopback
    # The retry resolved again, got 127.0.0.1, and was refused before dialing.
    assert "Refusing to download a file from rebind.example: it is a loopback address" in str(caught.value)


def test_the_checked_address_is_dialed_and_the_name_kept_for_the_host_header(files: FakeServer, tmp_path) -> None:
    files.add_file("/lora.safetensors", LORA)
    port = int(files.base_url.rsplit(":", 1)[1])
    resolver = SequenceResolver({"files.example": [["127.0.0.1"]]})
    backend = RecordingBackend()
    policy = AddressPolicy(resolver=resolver, trusted_networks=LOOPBACK_ONLY)

    with pinned_client(policy, backend) as client:
        fetch_url(client, f"http://files.example:{port}/lora.safetensors", tmp_path / "x")

    assert digest((tmp_path / "x").read_bytes()) == digest(LORA)
    assert backend.dialed == ["127.0.0.1"] and resolver.lookups == ["files.example"]
    assert [r.host for r in files.requests] == [f"files.example:{port}"]


def test_a_name_with_any_refused_address_is_refused_before_dialing(files: FakeServer, tmp_path: Path) -> None:
    resolver = SequenceResolver({"mixed.example": [[PUBLIC, "10.0.0.5"]]})
    backend = RecordingBackend()

    with pinned_client(AddressPolicy(resolver=resolver), backend) as client:
        with pytest.raises(AddressRefused, match="from mixed.example: it is a private or reserved address"):
            fetch_url(client, "http://mixed.example/lora.safetensors", tmp_path / "x")
    assert backend.dialed == []


def test_a_redirect_to_a_name_that_resolves_privately_is_refused(files: FakeServer, tmp_path: Path) -> None:
    port = int(files.base_url.rsplit(":", 1)[1])
    files.add_redirect("/lora.safetensors", f"http://internal.example:{port}/secret.safetensors")
    files.add_file("/secret.safetensors", LORA)
    resolver = SequenceResolver({"files.example": [["127.0.0.1"]], "internal.example": [["10.1.2.3"]]})
    backend = RecordingBackend()
    policy = AddressPolicy(resolver=resolver, trusted_networks=LOOPBACK_ONLY)

    with pinned_client(policy, backend) as client:
        with pytest.raises(AddressRefused, match="from internal.example: it is a private or reserved address"):
            fetch_url(client, f"http://files.example:{port}/lora.safetensors", tmp_path / "x")
    assert [r.path for r in files.requests] == ["/lora.safetensors"]
    assert backend.dialed == ["127.0.0.1"]


class FailingResolver:
    """A DNS answer that is an error: `errno` as getaddrinfo raises it (EAI_NONAME, EAI_AGAIN)."""

    def __init__(self, errno: int) -> None:
        self.errno, self.lookups = errno, 0

    def __call__(self, name: str, port: int) -> list[str]:
        self.lookups += 1
        raise socket.gaierror(self.errno, "as the resolver says")


class UnresolvingBackend(httpcore2.NetworkBackend):
    """Connects by name as the system does, on a resolver that knows no name (the allow_private path)."""

    def __init__(self, errno: int) -> None:
        self.errno, self.dials = errno, 0

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.dials += 1
        try:
            raise socket.gaierror(self.errno, "as the resolver says")
        except socket.gaierror as error:  # httpcore2's SyncBackend maps it like this
            raise httpcore2.ConnectError(str(error)) from error


@pytest.mark.parametrize("allow_private", [False, True], ids=["pinned", "by name"])
def test_a_host_dns_does_not_know_fails_at_once_and_one_it_could_not_answer_is_retried(tmp_path, allow_private):
    """NXDOMAIN is a typo no wait fixes: one lookup, no retry, the host named. A resolver that could not answer
    for now (EAI_AGAIN) is a transient failure like a refused connection, tried again."""
    sleeps: list[float] = []
    retry = RetryPolicy(attempts=3, base_delay=0.01, sleep=sleeps.append)
    for errno, retried in ((socket.EAI_NONAME, False), (socket.EAI_AGAIN, True)):
        resolver, backend = FailingResolver(errno), UnresolvingBackend(errno)
        policy = AddressPolicy(allow_private=allow_private, resolver=resolver, subject="a LoRA")
        sleeps.clear()
        with pinned_client(policy, backend) as client:
            with pytest.raises(GaveUp if retried else UnknownHost) as caught:
                download(client, "http://typo.example/x.safetensors", tmp_path / "x", headers={}, what="LoRA x",
                         limit=SizeLimit(10**9, "the test limit."), retry=retry)  # fmt: skip
        tries = backend.dials if allow_private else resolver.lookups
        assert (tries, len(sleeps)) == ((3, 2) if retried else (1, 0))
        if not retried:
            assert str(caught.value) == (
                "Cannot download a LoRA from typo.example: no such host (DNS does not know the name). Check the URL."
            )


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("fd00::1", "private"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "private or reserved"),
        ("224.0.0.1", "private or reserved"),
        ("100.64.0.1", "private"),
        ("8.8.8.8", None),
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
        ("2606:4700:4700::1111", None),
    ],
)
def test_addresses_that_embed_or_are_private_ones_are_refused(address: str, refused: str | None) -> None:
    reason = AddressPolicy().refusal(ipaddress.ip_address(address))
    assert (reason is None) if refused is None else (reason is not None and refused in reason)


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_to_a_pinned_address_uses_the_name_for_sni_and_the_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "lora.example")
    seen: dict[str, list] = {"sni": [], "host": []}
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server_context.sni_callback = lambda sock, name, ctx: seen["sni"].append(name)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["host"].append(self.headers.get("Host"))
            self.send_response(200)
            self.send_header("Content-Length", str(len(LORA)))
            self.end_headers()
            self.wfile.write(LORA)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    policy = AddressPolicy(resolver=lambda name, port: ["127.0.0.1"], trusted_networks=LOOPBACK_ONLY)
    try:
        with pinned_client(policy, RecordingBackend(), ssl_context=ssl.create_default_context(cafile=cert)) as client:
            fetch_url(client, f"https://lora.example:{port}/lora.safetensors", tmp_path / "x")
        assert digest((tmp_path / "x").read_bytes()) == digest(LORA)
        assert seen == {"sni": ["lora.example"], "host": [f"lora.example:{port}"]}

        # The same address under a name the certificate does not cover: verification fails.
        other, _ = _self_signed(tmp_path, "other.example")
        context = ssl.create_default_context(cafile=other)
        with pinned_client(policy, RecordingBackend(), ssl_context=context) as client:
            with pytest.raises(GaveUp, match="attempts failed.*ConnectError"):
                fetch_url(client, f"https://lora.example:{port}/lora.safetensors", tmp_path / "y")
    finally:
        server.shutdown()
        server.server_close()


def test_proxy_variables_do_not_route_downloads_around_the_policy(files: FakeServer, tmp_path, monkeypatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there: a used proxy would fail
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    url = files.add_file("/lora.safetensors", LORA)
    config = ServerConfig(lora_cache_dir=tmp_path / "cache", allow_private_urls=True)

    assert LoraFetcher(config, retry=FAST_RETRY).fetch(url).size == len(LORA)


# -- local paths ---------------------------------------------------------------------------------------------


def local_fetcher(tmp_path: Path, local_dirs: str | None) -> LoraFetcher:
    environ = {"LORA_CACHE_DIR": str(tmp_path / "cache")}
    if local_dirs is not None:
        environ["LORA_LOCAL_DIRS"] = local_dirs
    return LoraFetcher(ServerConfig.from_env(environ), retry=FAST_RETRY)


def test_local_paths_are_refused_unless_lora_local_dirs_allows_them(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "loras", tmp_path / "private"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "style.safetensors").write_bytes(LORA)
    (outside / "secret.safetensors").write_bytes(lora_bytes(42))
    (allowed / "escape.safetensors").symlink_to(outside / "secret.safetensors")
    (allowed / "linked").mkdir()
    (allowed / "linked" / "lora.safetensors").symlink_to(outside / "secret.safetensors")

    closed = local_fetcher(tmp_path, None)
    for source in (
        str(allowed / "style.safetensors"),
        "/nowhere/lora.safetensors",
        f"file://{allowed}/style.safetensors",
    ):
        # The same answer whether or not the file exists: a refused path reveals nothing.
        with pytest.raises(LoraError, match=r"Local LoRA paths .* are not allowed on this server.*LORA_LOCAL_DIRS="):
            closed.fetch(source)

    other = tmp_path / "other"
    other.mkdir()
    fetcher = local_fetcher(tmp_path, os.pathsep.join([str(other), str(allowed)]))
    assert fetcher.fetch(str(allowed / "style.safetensors")).path == (allowed / "style.safetensors")
    assert fetcher.fetch(f"file://{allowed}/style.safetensors").size == len(LORA)
    for source in (
        str(outside / "secret.safetensors"),
        f"{allowed}/../private/secret.safetensors",
        str(allowed / "escape.safetensors"),  # a link that leads out
        str(allowed / "linked"),  # a folder whose only LoRA is such a link
        f"file://{outside}/secret.safetensors",
    ):
        with pytest.raises(LoraError, match="is outside the folders LORA_LOCAL_DIRS allows"):
            fetcher.fetch(source)


# -- size caps -----------------------------------------------------------------------------------------------


def capped_fetcher(tmp_path: Path, **environ: str) -> LoraFetcher:
    config = ServerConfig.from_env(
        {"LORA_CACHE_DIR": str(tmp_path / "cache"), "LORA_ALLOW_PRIVATE_URLS": "1", **environ}
    )
    return LoraFetcher(config, retry=FAST_RETRY)


def assert_nothing_kept(fetcher: LoraFetcher) -> None:
    assert list(fetcher.cache.entries_dir.iterdir()) == []
    assert list(fetcher.cache.tmp_dir.iterdir()) == []


def test_lora_max_file_bytes_from_content_length_and_while_streaming(files: FakeServer, tmp_path: Path) -> None:
    big = lora_bytes(43, padding=100_000)
    url = files.add_file("/big.safetensors", big)
    fetcher = capped_fetcher(tmp_path, LORA_MAX_FILE_BYTES="50kB")
    message = r"is 10\d\.\d kB, more than a LoRA file may be \(LORA_MAX_FILE_BYTES=50000, 50\.0 kB\)"

    with pytest.raises(LoraError, match=message):
        fetcher.fetch(url)
    assert len(files.gets("/big.safetensors")) == 1  # refused from the header: not retried
    files.wrong_length("/big.safetensors", announced=None)  # a server that announces nothing
    with pytest.raises(LoraError, match=r"is [5-9]\d\.\d kB, more than a LoRA file may be"):
        fetcher.fetch(url)
    assert_nothing_kept(fetcher)
    # The cache cap binds when it is the tighter one.
    with pytest.raises(LoraError, match=r"more than the whole LoRA cache may hold \(LORA_CACHE_MAX_BYTES=60000"):
        capped_fetcher(tmp_path, LORA_MAX_FILE_BYTES="1GB", LORA_CACHE_MAX_BYTES="60kB").fetch(url)


def test_data_uris_and_tar_members_are_held_to_the_same_cap(tmp_path: Path) -> None:
    fetcher = capped_fetcher(tmp_path, LORA_MAX_FILE_BYTES="50kB")
    big = lora_bytes(44, padding=100_000)
    encoded = "data:application/octet-stream;base64," + base64.b64encode(big).decode()
    with pytest.raises(LoraError, match=r"LoRA data:.* is 10\d\.\d kB, more than a LoRA file may be"):
        fetcher.fetch(encoded)
    small_tar = make_tar({"lora.safetensors": big}, gzip=True)  # zeros compress: the tar itself is small
    assert len(small_tar) < 50_000
    with pytest.raises(LoraError, match=r"The LoRA in data:.* is 10\d\.\d kB, more than a LoRA file may be"):
        fetcher.fetch("data:application/gzip;base64," + base64.b64encode(small_tar).decode())
    assert_nothing_kept(fetcher)


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, link
    return info


def test_a_compressed_tar_claiming_a_huge_member_is_refused_before_reading_it(tmp_path: Path) -> None:
    """A decompression bomb: the header of the first member claims 1 TB; refusing at that header means
    neither the disk nor the decompressor is spent on it."""
    header_only = _tar((_info("captions/1.txt", size=10**12), None))  # the data never follows
    bomb = gzip.compress(header_only + b"\0" * 1024) + gzip.compress(_tar((_info("lora.safetensors", len(LORA)), LORA)))
    fetcher = capped_fetcher(tmp_path, LORA_MAX_FILE_BYTES="1MB")

    with pytest.raises(LoraError, match=r"unpacks to more than \d+ bytes \(member 'captions/1.txt'\)"):
        fetcher.fetch("data:application/gzip;base64," + base64.b64encode(bomb).decode())
    assert_nothing_kept(fetcher)


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_info("captions/1.txt", kind=tarfile.LNKTYPE, link="/etc/passwd"), "'captions/1.txt' is a link"),
        (_info("config.yaml", kind=tarfile.SYMTYPE, link="../../../etc/shadow"), "'config.yaml' is a link"),
        (_info("dev", kind=tarfile.CHRTYPE), "'dev' is a device or fifo"),
        (_info("pipe", kind=tarfile.FIFOTYPE), "'pipe' is a device or fifo"),
        (_info("/etc/cron.d/x", size=1), "points outside the archive"),
        (_info("a/../../x", size=1), "points outside the archive"),
    ],
)
def test_tars_with_links_devices_or_escaping_names_anywhere_are_refused(tmp_path, member, message) -> None:
    data = b"x" * member.size if member.size else None
    archive = _tar((_info("lora.safetensors", len(LORA)), LORA), (member, data))

    with pytest.raises(LoraError, match=f"unsafe tar: .*{message}"):
        capped_fetcher(tmp_path).fetch("data:application/x-tar;base64," + base64.b64encode(archive).decode())


def test_hugging_face_files_over_the_cap_are_not_downloaded(tmp_path: Path) -> None:
    with FakeHub() as hub:
        hub.add_repo("big/lora", {"lora.safetensors": lora_bytes(45, padding=100_000)})
        fetcher = capped_fetcher(tmp_path, LORA_MAX_FILE_BYTES="50kB", HF_ENDPOINT=hub.endpoint)
        with pytest.raises(LoraError, match=r"LoRA huggingface.co/big/lora \(lora.safetensors\) is 10\d\.\d kB, more"):
            fetcher.fetch("huggingface.co/big/lora")
        assert hub.fetched("big/lora") == []  # the size came from the metadata; no byte was downloaded
    assert_nothing_kept(fetcher)


# -- URLs no request could use, and what is shown of a URL --------------------------------------------------------


def test_a_malformed_url_is_refused_before_anything_is_sent(files: FakeServer, tmp_path: Path) -> None:
    from guarded_download import MalformedURL, get_json

    port = files.base_url.rsplit(":", 1)[1]
    with make_client(AddressPolicy(allow_private=True), Timeouts(2, 2)) as client:
        for url, why in [
            (f"http://127.0.0.1:{port}x/a.bin", f"its port '{port}x' is not a number"),
            ("http://[127.0.0.1/a.bin", "not a valid IPv6 address"),
            ("http://0177.0.0.1/a.bin", "is not a valid IPv4 address"),
        ]:
            with pytest.raises(MalformedURL, match=why):
                download(client, url, tmp_path / "x", headers={}, what="x", limit=SizeLimit(100, "."), retry=FAST_RETRY)
            with pytest.raises(MalformedURL, match=why):
                get_json(client, url, {}, FAST_RETRY)
    assert files.requests == []


def test_userinfo_and_queries_never_reach_messages_or_library_logs(caplog) -> None:
    import logging

    from guarded_download import redact_url

    assert redact_url("HTTPS://alice:SECRET@Host.Example:8443/a.safetensors?sig=S") == (
        "https://host.example:8443/a.safetensors?…"
    )
    assert redact_url("http://alice:SECRET@[::1/x?sig=S") == "http://[::1/x?…"  # unparseable: cut as text
    assert redact_url("http://host:abc/x") == "http://host:abc/x"  # a bad port is shown as given
    caplog.set_level(logging.INFO, logger="httpx2")
    logging.getLogger("httpx2").info('HTTP Request: GET http://alice:SECRET@host/x?sig=S "HTTP/1.1 200 OK"')
    assert "SECRET" not in caplog.text and "sig=S" not in caplog.text and "http://host/x?…" in caplog.text


# -- image URLs (Cog's own downloads) -----------------------------------------------------------------------------


def test_guarded_image_download_applies_the_policy_and_the_cap(files: FakeServer) -> None:
    url = files.add_file("/photo.png", png_bytes(), content_type="image/png")
    timeouts, cap = Timeouts(connect=2, read=2), SizeLimit(10**6, "an input image may be (1 MB).")

    refused = input_urls.GuardedDownload(url, AddressPolicy(subject="an input image"), timeouts, cap)
    with pytest.raises(UserInputError, match="Refusing to download an input image from 127.0.0.1: it is a loopback"):
        refused.read()
    assert files.requests == []

    allowed = AddressPolicy(allow_private=True, subject="an input image")
    assert input_urls.GuardedDownload(url, allowed, timeouts, cap).read() == png_bytes()
    tiny_cap = SizeLimit(100, "an input image may be (100 B).")
    with pytest.raises(UserInputError, match=r"an input image is \d+ B, more than an input image may be \(100 B\)"):
        input_urls.GuardedDownload(url, allowed, timeouts, tiny_cap, FAST_RETRY).read()


def test_install_wraps_path_validate_once_downloads_at_once_and_caps_data_uris(files: FakeServer) -> None:
    """Against a stand-in for cog.types, so this process's real cog stays untouched. The download happens inside
    validate (the prediction's thread, where coglet's cancel arrives), before cog's convert runs."""

    class FakePath:
        @classmethod
        def validate(cls, value):
            return ("cog's own", value)

    class FakeURLPath:
        def __init__(self, *, source, filename, fileobj):
            self.source, self.filename, self.fileobj, self._path = source, filename, fileobj, None

    fake_cog = types.SimpleNamespace(
        Path=FakePath, URLPath=FakeURLPath, get_filename=lambda url: url.rsplit("/", 1)[-1]
    )
    input_urls.install(fake_cog, ServerConfig())
    wrapped = FakePath.validate
    input_urls.install(fake_cog, ServerConfig(allow_private_urls=True))  # not wrapped twice: configuration replaced
    assert FakePath.validate.__func__ is wrapped.__func__

    url = files.add_file("/a/photo.png", png_bytes(), content_type="image/png") + "?sig=x"
    guarded = FakePath.validate(url)
    assert isinstance(guarded, FakeURLPath) and hasattr(type(guarded), "convert")
    assert (guarded.source, guarded.filename) == (url, "photo.png?sig=x")
    assert isinstance(guarded.fileobj, input_urls.GuardedDownload) and guarded.fileobj.policy.allow_private
    assert len(files.gets("/a/photo.png")) == 1, "downloaded in validate, before any read"
    assert guarded.fileobj.read() == png_bytes()
    assert FakePath.validate("data:image/png;base64,AAAA") == ("cog's own", "data:image/png;base64,AAAA")
    assert FakePath.validate("/tmp/x.png") == ("cog's own", "/tmp/x.png")
    with pytest.raises(UserInputError, match="data: URI of an input image is .* more than an input image may be"):
        FakePath.validate("data:image/png;base64," + "A" * (input_urls.MAX_INPUT_BYTES * 4 // 3 + 8192))


def test_a_failed_image_download_leaves_no_temp_file(files: FakeServer, tmp_path: Path, monkeypatch) -> None:
    """cog's URLPath.convert creates its temp file before copying and keeps it when the copy fails; ours
    downloads first. Checked with cog's real URLPath (subclassed, not patched) in a private temp dir."""
    import tempfile

    import cog.types

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    url_path_type = input_urls._downloading_first(cog.types.URLPath)
    allowed = AddressPolicy(allow_private=True, subject="an input image")
    cap = SizeLimit(10**6, "an input image may be (1 MB).")

    def url_path(path: str):
        fileobj = input_urls.GuardedDownload(files.url(path), allowed, Timeouts(2, 2), cap, FAST_RETRY)
        return url_path_type(source=files.url(path), filename=path.lstrip("/"), fileobj=fileobj)

    with pytest.raises(UserInputError, match=r"The input image URL http://127.0.0.1:\d+/missing.png answered HTTP 404"):
        url_path("/missing.png").convert()
    assert list(tmp_path.iterdir()) == []
    files.add_file("/photo.png", png_bytes(), content_type="image/png")
    photo = url_path("/photo.png")
    converted = photo.convert()
    assert digest(Path(converted).read_bytes()) == digest(png_bytes()) and list(tmp_path.iterdir()) == [Path(converted)]
    assert photo.fileobj.closed, "the download behind the copy is released at once"


def test_image_urls_with_a_scheme_in_capitals_are_downloaded_under_the_guard(files: FakeServer) -> None:
    """coglet's own test for a URL is case-sensitive, so `HTTP://...` reaches predict() as a string; schemes are
    not (RFC 3986): require_file downloads it under the installed guard, into a file that goes with the path."""
    fake_cog = types.SimpleNamespace(
        Path=type("FakePath", (), {"validate": classmethod(lambda cls, v: v)}), URLPath=object, get_filename=str
    )
    input_urls.install(fake_cog, ServerConfig(allow_private_urls=True))
    url = files.add_file("/Photo.png", png_bytes(), content_type="image/png")

    downloaded = input_urls.require_file("HTTP://" + url.removeprefix("http://"), "image")
    assert digest(Path(downloaded).read_bytes()) == digest(png_bytes()) and len(files.gets("/Photo.png")) == 1
    inline = input_urls.require_file("Data:image/png;base64," + base64.b64encode(png_bytes()).decode(), "mask")
    assert digest(Path(inline).read_bytes()) == digest(png_bytes())
    kept = [Path(downloaded), Path(inline)]
    del downloaded, inline
    assert not [path for path in kept if path.exists()], "the files go with the paths"

    with pytest.raises(UserInputError, match=r"The input image URL http://127.0.0.1:\d+/gone.png answered HTTP 404"):
        input_urls.require_file("Http://" + files.url("/gone.png").removeprefix("http://"), "image")
    input_urls.install(fake_cog, ServerConfig())
    with pytest.raises(UserInputError, match="Refusing to download an input image from 127.0.0.1"):
        input_urls.require_file("HTTPS://" + url.removeprefix("http://"), "image")


def test_plain_strings_for_image_inputs_are_refused() -> None:
    assert input_urls.require_file(None, "image") is None
    assert input_urls.require_file(Path("/tmp/x.png"), "image") == Path("/tmp/x.png")
    for value in ("/etc/hostname", "file:///etc/hostname", "../outputs/out-0.png"):
        with pytest.raises(ValueError, match="image must be an http\\(s\\) URL or a data: URI"):
            input_urls.require_file(value, "image")


@pytest.fixture(scope="module")
def strict_server(tiny_env, tmp_path_factory):
    """A Cog server with the default policy: LORA_ALLOW_PRIVATE_URLS unset."""
    env = {k: v for k, v in tiny_env.items() if k != "LORA_ALLOW_PRIVATE_URLS"}
    env["LORA_CACHE_DIR"] = str(tmp_path_factory.mktemp("strict-cache"))
    server = CogServer(env, log_path=tmp_path_factory.mktemp("strict") / "server.log").start()
    yield server
    server.stop()


def test_the_server_refuses_image_and_lora_urls_to_loopback_and_stays_ready(strict_server, files) -> None:
    image = files.add_file("/photo.png", png_bytes(), content_type="image/png")
    lora = files.add_file("/lora.safetensors", LORA)
    base = {"prompt": "x", "num_inference_steps": 1, "megapixels": "0.25", "output_format": "png"}
    cases = [
        ({"image": image}, "Refusing to download an input image from 127.0.0.1: it is a loopback address"),
        ({"image": image.replace("127.0.0.1", "localhost"), "mask": image}, "Refusing to download an input image"),
        ({"replicate_weights": lora}, "Refusing to download a LoRA from 127.0.0.1: it is a loopback address"),
        ({"image": "/etc/hostname"}, "image must be an http(s) URL or a data: URI"),
        ({"image": "file:///etc/hostname"}, "image must be an http(s) URL or a data: URI"),
        ({"replicate_weights": "/etc/passwd"}, "Local LoRA paths (/etc/passwd) are not allowed on this server"),
    ]
    for inputs, message in cases:
        body = strict_server.predict(**base, **inputs).json()
        assert body["status"] == "failed" and message in body["error"], (inputs, body.get("error"))
        assert strict_server.health()["status"] == "READY"
    assert files.requests == []
    assert strict_server.predict(**base).json()["status"] == "succeeded"
