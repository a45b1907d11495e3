"""Who a request is when no virtual key names it: the client's address, proxies considered.

``X-Forwarded-For`` is whatever the client wrote, so it counts only when the direct peer is a
proxy the operator trusts (RELIABILITY S6); otherwise anyone could pick their own bucket, or
someone else's, with one header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.types import Scope

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# An address is at most 45 characters; anything longer in the header is not one.
_MAX_ENTRY = 64


class ClientIdentity:
    """``identity(scope)``: ``"ip:<address>"`` of the client, or ``"ip:unknown"``.

    ``trusted_proxies``: addresses or networks (``"10.0.0.0/8"``) of the proxies in front of the
    gateway, or ``"*"`` to trust any peer (only when nothing can reach the gateway directly).
    When the peer is trusted, the client is the right-most ``X-Forwarded-For`` entry that is not
    itself a trusted proxy, as uvicorn's ``ProxyHeadersMiddleware`` reads it.
    """

    __slots__ = ("_any", "_hosts", "_networks")

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        if isinstance(trusted_proxies, str):
            trusted_proxies = [p.strip() for p in trusted_proxies.split(",") if p.strip()]
        self._any = False
        hosts: set[str] = set()
        networks: list[_Network] = []
        for entry in trusted_proxies:
            if entry == "*":
                self._any = True
                continue
            try:
                if "/" in entry:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                else:
                    hosts.add(str(ipaddress.ip_address(entry)))
            except ValueError:
                raise ConfigurationError(
                    f"trusted_proxies entries must be IP addresses, networks or '*', not {entry!r}"
                ) from None
        self._hosts = frozenset(hosts)
        self._networks = tuple(networks)

    @property
    def enabled(self) -> bool:
        return self._any or bool(self._hosts) or bool(self._networks)

    def trusted(self, host: str) -> bool:
        if self._any or host in self._hosts:
            return True
        if not self._networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def __call__(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = str(client[0]) if client else None
        if peer is not None and self.enabled and self.trusted(peer):
            forwarded = _forwarded_for(scope["headers"])
            for entry in reversed(forwarded):
                if not self.trusted(entry):
                    return f"ip:{entry}"
            if forwarded:
                return f"ip:{forwarded[0]}"
        return f"ip:{peer}" if peer else "ip:unknown"


def _forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    entries: list[str] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            for part in value.decode("latin-1").split(","):
                part = part.strip()
                if part:
                    entries.append(part[:_MAX_ENTRY])
    return entries
