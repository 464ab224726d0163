"""The SSRF guard for webhook URLs: http(s) only, and only to public addresses.

A URL passes when its scheme is http or https, it carries no credentials, and every address
its host resolves to is globally routable (not loopback, private, link-local, shared,
reserved, multicast or unspecified), unless the allowlist names the host or the address.
The API checks at submit what it can without DNS (scheme, credentials, literal addresses:
an API node never blocks on a resolver); the worker checks everything right before each
delivery, after resolving, and connects to the address it checked (no second lookup that
could be rebound); redirects are never followed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from inferq.core.errors import UnsafeUrl

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Allowlist:
    """Hosts and networks webhooks may reach although the guard would refuse them."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        """From ``"127.0.0.1,10.0.0.0/8,hooks.internal"`` (settings' ``webhook_allowlist``)."""
        hosts, networks = set(), []
        for item in filter(None, (part.strip() for part in text.split(","))):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, address: IPAddress) -> bool:
        """Whether ``address`` is inside an allowlisted network."""
        return any(address in network for network in self.networks)


@dataclasses.dataclass(frozen=True)
class Destination:
    """A checked URL: where to connect (a vetted address) and what to ask for there."""

    url: str
    scheme: str
    host: str
    port: int
    target: str  # path and query
    address: str

    @property
    def host_header(self) -> str:
        """The ``Host`` header the URL implies."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (system resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"the host {host[:255]!r} does not resolve") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is a globally routable unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_url(url: str, allowlist: Allowlist, resolver: Resolver | None = resolve) -> Destination:
    """The vetted destination of ``url``, or :class:`UnsafeUrl` saying why not.

    With no ``resolver`` a host name is taken on trust (its ``address`` is empty) and only
    literal addresses are checked: what the API can know without a DNS lookup.
    """
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeUrl(f"the URL is malformed: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("only http and https URLs are allowed")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("credentials in the URL are not allowed")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeUrl("the URL has no host")
    if resolver is None and not _is_literal(host):
        return Destination(url, parts.scheme, host, port, _target(parts.path, parts.query), "")
    addresses = resolver(host, port) if resolver else [host]
    if not addresses:
        raise UnsafeUrl(f"the host {host[:255]!r} does not resolve")
    named = host.lower() in allowlist.hosts
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError as exc:
            raise UnsafeUrl(f"the host resolves to an unusable address {text!r}") from exc
        if not (named or is_public(address) or allowlist.allows(address)):
            raise UnsafeUrl(
                f"the host resolves to {address}, a non-public address (loopback, private, "
                "link-local, multicast or reserved); the webhook allowlist does not include it"
            )
    return Destination(
        url, parts.scheme, host, port, _target(parts.path, parts.query), addresses[0]
    )


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _target(path: str, query: str) -> str:
    return (path or "/") + ("?" + query if query else "")
