"""Which hosts a download may reach: by default only public internet addresses.

A URL that comes from whoever sends a prediction could otherwise make the server fetch from its own
loopback services, the private network or a cloud metadata endpoint (SSRF) and echo bits of the answer
back in an error. `allow_private=True` turns the check off (tests, local mirrors).

`AddressPolicy.addresses(host, port)` resolves a name ONCE, checks EVERY address it resolved to, and
returns them: the caller connects to those addresses and no others (`transport.PinnedNetworkBackend`),
so a DNS answer that changes between the check and the connection (rebinding) cannot steer the
connection to a refused address. Every connection goes through it, the first URL's and each redirect's.

Refused: loopback, private (RFC 1918, CGNAT, ULA), link-local (cloud metadata lives at 169.254.169.254),
multicast, reserved and unspecified addresses, IPv6 forms that embed an IPv4 address (mapped, NAT64,
6to4, Teredo) when the embedded one is refused, and the metadata host names themselves.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import AddressRefused, ResolutionFailed, SchemeRefused, UnknownHost

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# Names that are metadata endpoints whatever they resolve to (GCP answers on a public-looking name too).
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# getaddrinfo's answers that mean the name does not exist or has no address (NXDOMAIN, NODATA); any other
# failure (EAI_AGAIN: the resolver could not answer for now) may pass and is retried.
_NO_SUCH_NAME = frozenset(code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None)


def no_such_name(error: BaseException) -> bool:
    """Whether `error` is the resolver saying the name does not exist (not that it could not answer)."""
    return isinstance(error, socket.gaierror) and error.errno in _NO_SUCH_NAME


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order of preference."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    # Networks allowed even though they are not public (tests use it to prove the check on redirects).
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    resolver: Resolver = field(default=resolve, repr=False, compare=False)
    subject: str = "a file"  # what is downloaded, for the messages: "a LoRA", "an input image"

    def check_scheme(self, scheme: str) -> None:
        if scheme not in ("http", "https"):
            raise SchemeRefused(self.subject, scheme)

    def check(self, scheme: str, host: str, port: int | None) -> None:
        """Raise unless a request to scheme://host:port is allowed (resolving the name to decide)."""
        self.check_scheme(scheme)
        if not self.allow_private:
            self.addresses(host, port or (443 if scheme == "https" else 80))

    def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses `host` resolves to, each of them allowed; AddressRefused if any is not.

        One refused address refuses the host: a name that answers both a public and a private address
        would otherwise reach the private one whenever the connection happens to pick it.
        """
        name = host.strip("[]").lower().rstrip(".")
        if not self.allow_private and name in METADATA_HOSTS:
            raise self._refused(host, "a cloud metadata endpoint")
        found = self._resolve(name, port)
        if not found:
            raise ResolutionFailed(f"The host {name} resolved to no address. Check the URL.")
        if not self.allow_private:
            for address in found:
                reason = self.refusal(address)
                if reason is not None:
                    raise self._refused(host, reason)
        return found

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` is refused, or None when it is allowed."""
        if any(address in network for network in self.trusted_networks):
            return None
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return self.refusal(embedded)
        if address.is_loopback:
            return "a loopback address"
        if address.is_link_local:
            return "a link-local address (cloud metadata lives there)"
        if address.is_multicast or address.is_unspecified or not address.is_global:
            return "a private or reserved address"
        return None

    def _resolve(self, name: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(name)]
        except ValueError:
            pass
        try:
            found = self.resolver(name, port)
        except (OSError, UnicodeError) as error:
            if no_such_name(error):
                raise UnknownHost(self.subject, name) from None
            raise ResolutionFailed(f"Cannot resolve the host {name} ({error}). Check the URL.") from None
        return [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]

    def _refused(self, host: str, reason: str) -> AddressRefused:
        return AddressRefused(self.subject, host, reason)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (::ffff:a.b.c.d, NAT64, 6to4, Teredo's server)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address; the server's is a public relay
    return None
