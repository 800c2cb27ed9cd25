"""Whether a URL is one this downloader can fetch as written: a host it can name, a port it can dial.

httpx2 parses URLs leniently: it accepts `xn--` (a host no resolver will find), `0177.0.0.1` or `256.0.0.1`
(which it refuses later, with its own `InvalidURL` and wording) and raises `ValueError` for others
(`http://[::1/x`, `http://host:abc/x`). A URL comes from whoever sends a prediction, so it is checked once,
before anything is sent, and a bad one is a `MalformedURL` whose message says what is wrong with it:

- it parses at all (brackets closed, no space or control character in the host);
- a port, when given, is a number from 1 to 65535;
- an IPv6 host is a valid address in brackets; a host that looks numeric (its last label is digits, or a
  label starts with 0x) is a valid dotted-quad IPv4 address, written without leading zeros, because resolvers
  read `0177.0.0.1` as octal (127.0.0.1) while people read it as decimal;
- a host name is at most 253 characters of labels of 1 to 63 letters, digits, hyphens (not first or last) or
  underscores; Unicode names are converted with IDNA 2008 (UTS 46), and `xn--` labels must decode.

Schemes are not checked here: which schemes may be fetched is the address policy's question.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import idna

from .errors import MalformedURL
from .redaction import redact_url

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
MAX_HOST_CHARS = 253


def check_url(url: str) -> None:
    """Raise `MalformedURL` unless `url` has a host and port this downloader can use."""
    why = url_problem(url)
    if why is not None:
        raise MalformedURL(redact_url(url), why)


def url_problem(url: str) -> str | None:
    """What is wrong with `url`'s host or port, in a few words; None when nothing is."""
    try:
        parts = urlsplit(url)
    except ValueError:  # urlsplit's only complaint: an unclosed or misplaced bracket
        return "its host is not a valid IPv6 address in brackets"
    netloc = parts.netloc.rpartition("@")[2]
    if not parts.hostname:
        return "it has no host"
    try:
        port = parts.port
    except ValueError:
        return f"its port {netloc.rpartition(':')[2]!r} is not a number from 1 to 65535"
    if port == 0:
        return "its port 0 is not a number from 1 to 65535"
    if netloc.startswith("["):
        return _ipv6_problem(parts.hostname)
    return _host_problem(parts.hostname)


def _ipv6_problem(host: str) -> str | None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return f"its host [{host}] is not a valid IPv6 address"
    return None


def _host_problem(host: str) -> str | None:
    labels = host.rstrip(".").split(".")
    if _NUMERIC_LABEL.match(labels[-1]) or any(label.startswith("0x") for label in labels):
        return _ipv4_problem(host)
    try:
        ascii_host = host if host.isascii() else idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:
        return f"its host {host!r} is not a valid international domain name"
    return _name_problem(ascii_host.lower().rstrip("."))


def _ipv4_problem(host: str) -> str | None:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return f"its host {host!r} is not a valid IPv4 address (four numbers from 0 to 255, without leading zeros)"
    return None


def _name_problem(name: str) -> str | None:
    if len(name) > MAX_HOST_CHARS:
        return f"its host name is longer than {MAX_HOST_CHARS} characters"
    for label in name.split("."):
        if not _LABEL.match(label):
            return f"its host {name!r} is not a valid host name"
        if label.startswith("xn--") and not _decodes(label):
            return f"its host {name!r} is not a valid host name ({label!r} is not valid punycode)"
    return None


def _decodes(label: str) -> bool:
    try:
        idna.decode(label)
    except (idna.IDNAError, UnicodeError):
        return False
    return True
