"""Which hosts a LoRA download may reach: by default only public internet addresses.

A LoRA URL comes from whoever sends the prediction, so without this check it could make the server
fetch from its own loopback services, the private network or a cloud metadata endpoint (SSRF) and
echo bits of the answer back in an error. Every request our HTTP client sends, the first URL and each
redirect, passes `AddressPolicy.check` (see `http.PolicyTransport`). LORA_ALLOW_PRIVATE_URLS=1 turns
the check off for tests and local mirrors.

This is the hook, not the fortress: the name is resolved here and again by the connection, so a DNS
answer that changes in between (rebinding) is not caught yet; pinning the checked address is a later
hardening.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import LoraError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# Names that are metadata endpoints whatever they resolve to (GCP answers on a public-looking name too).
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (what the connection may end up using)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


@dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    # Networks allowed even though they are not public (tests use it to prove the check on redirects).
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    resolver: Resolver = field(default=resolve, repr=False, compare=False)

    def check(self, scheme: str, host: str, port: int | None) -> None:
        """Raise LoraError unless a request to scheme://host:port is allowed."""
        if scheme not in ("http", "https"):
            raise LoraError(f"LoRA downloads use http or https, not {scheme}://.")
        if self.allow_private:
            return
        name = host.strip("[]").lower().rstrip(".")
        if name in METADATA_HOSTS:
            raise _refused(host, "a cloud metadata endpoint")
        for address in self._addresses(name, port or (443 if scheme == "https" else 80)):
            reason = self._refusal(address)
            if reason is not None:
                raise _refused(host, reason)

    def _addresses(self, name: str, port: int) -> Iterable[IPAddress]:
        try:
            return [ipaddress.ip_address(name)]
        except ValueError:
            pass
        try:
            found = self.resolver(name, port)
        except OSError as error:
            raise LoraError(f"Cannot resolve the host {name} of the LoRA URL ({error}). Check the URL.") from None
        return [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]

    def _refusal(self, address: IPAddress) -> str | None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.trusted_networks):
            return None
        if address.is_loopback:
            return "a loopback address"
        if address.is_link_local:
            return "a link-local address (cloud metadata lives there)"
        if not address.is_global or address.is_multicast:
            return "a private or reserved address"
        return None


def _refused(host: str, reason: str) -> LoraError:
    return LoraError(
        f"Refusing to download a LoRA from {host}: it is {reason}. LoRA URLs must be on the public internet "
        "(an operator can set LORA_ALLOW_PRIVATE_URLS=1 for a local mirror)."
    )
