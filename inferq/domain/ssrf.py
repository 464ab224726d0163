"""The SSRF guard for webhook URLs: http(s) only, and only to public addresses.

A URL passes when its scheme is http or https, it carries no credentials, and every address
its host resolves to is globally routable (not loopback, private, link-local, shared,
reserved, multicast or unspecified), unless the allowlist names the host or the address.
The API checks at submit what it can without DNS (scheme, credentials, literal addresses:
an API node never blocks on a resolver); the worker checks everything right before each
delivery, after resolving, and connects to the address it checked (no second lookup that
could be rebound); redirects are never followed.

A host is read as the platform's resolver reads it, not as :mod:`ipaddress` does: every
``inet_aton`` spelling of an IPv4 address is an address (``2130706433``, ``0177.0.0.1``,
``0x7f.1``, ``127.1``, ``0``), and the host's own names (``localhost``, ``*.localhost``,
everything in ``/etc/hosts``) are refused without a lookup, at submit too. An IPv6 address
that carries an IPv4 address (IPv4-mapped, -compatible and -translated, NAT64, 6to4,
Teredo) is judged by the IPv4 address it carries: a host that routes NAT64 or 6to4 would
deliver there.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from inferq.core.errors import UnsafeUrl

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]
HOSTS_FILE = Path("/etc/hosts")
#: Names every resolver answers with loopback without asking DNS (RFC 6761 and Debian's).
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
#: Characters no host name has; some resolvers read "127.1 x" as 127.0.0.1 (old inet_aton).
_NOT_IN_A_HOST = re.compile(r"[\x00-\x20\x7f\\/@#?]")
#: A last label that is a number: no DNS name ends so, every resolver takes it for an address.
_NUMERIC_LABEL = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")


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


def parse_address(host: str) -> IPAddress | None:
    """``host`` as an address the way the platform's resolver reads a numeric host, or None
    for a name: an IPv6 literal, or IPv4 in any ``inet_aton`` form (one to four parts, each
    decimal, octal with a leading 0 or hex with 0x; the last part fills the bytes left)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    parts = host.split(".")
    if len(parts) > 4:
        return None
    values = [_aton_number(part) for part in parts]
    if any(value is None for value in values):
        return None
    *head, last = [int(value or 0) for value in values]
    tail_bytes = 4 - len(head)
    if any(value > 255 for value in head) or last >= 256**tail_bytes:
        return None
    number = 0
    for value in head:
        number = number * 256 + value
    return ipaddress.IPv4Address(number * 256**tail_bytes + last)


def _aton_number(part: str) -> int | None:
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", part):
        return int(part[2:], 16)
    if re.fullmatch(r"0[0-7]*", part):
        return int(part, 8)
    if re.fullmatch(r"[1-9][0-9]*", part):
        return int(part)
    return None


#: IPv6 prefixes whose addresses carry an IPv4 address, and where it sits (byte slices of
#: the 16 bytes; several for the local-use NAT64 prefix, whose layout its operator picks).
_CARRIERS: tuple[tuple[ipaddress.IPv6Network, tuple[tuple[slice, ...], ...]], ...] = tuple(
    (ipaddress.IPv6Network(prefix), layouts)
    for prefix, layouts in (
        ("::ffff:0:0/96", ((slice(12, 16),),)),  # IPv4-mapped
        ("::/96", ((slice(12, 16),),)),  # IPv4-compatible (deprecated; :: and ::1 too)
        ("::ffff:0:0:0/96", ((slice(12, 16),),)),  # IPv4-translated (SIIT)
        ("64:ff9b::/96", ((slice(12, 16),),)),  # NAT64, well-known prefix
        (
            "64:ff9b:1::/48",  # NAT64, local-use: RFC 6052's /48, /56, /64 and /96 layouts
            (
                (slice(6, 8), slice(9, 11)),
                (slice(7, 8), slice(9, 12)),
                (slice(9, 13),),
                (slice(12, 16),),
            ),
        ),
        ("2002::/16", ((slice(2, 6),),)),  # 6to4
    )
)
_TEREDO = ipaddress.IPv6Network("2001::/32")


def carried_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries (none for a plain IPv6 address)."""
    packed = address.packed
    if address in _TEREDO:
        server = ipaddress.IPv4Address(packed[4:8])
        client = ipaddress.IPv4Address(bytes(b ^ 0xFF for b in packed[12:16]))
        return (server, client)
    for network, layouts in _CARRIERS:
        if address in network:
            return tuple(
                ipaddress.IPv4Address(b"".join(packed[part] for part in layout))
                for layout in layouts
            )
    return ()


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is a globally routable unicast address; an IPv6 address that
    carries IPv4 addresses is public when every one it carries is."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = carried_ipv4(address)
        if carried:
            return all(is_public(inner) for inner in carried)
    return address.is_global and not address.is_multicast


def hosts_file_names(path: Path = HOSTS_FILE) -> frozenset[str]:
    """Every name ``path`` (``/etc/hosts``) gives an address to, lower case."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return frozenset()
    return _hosts_names(path, stamp)


@functools.lru_cache(maxsize=4)
def _hosts_names(path: Path, stamp: int) -> frozenset[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return frozenset()
    names: set[str] = set()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        names.update(name.lower().rstrip(".") for name in fields[1:])
    return frozenset(names)


def is_local_name(host: str, hosts_file: Path = HOSTS_FILE) -> bool:
    """Whether ``host`` names this machine without DNS: localhost, or a hosts-file name."""
    name = host.lower().rstrip(".")
    return (
        name in LOCAL_NAMES or name.endswith(".localhost") or name in hosts_file_names(hosts_file)
    )


def check_url(
    url: str,
    allowlist: Allowlist,
    resolver: Resolver | None = resolve,
    hosts_file: Path = HOSTS_FILE,
) -> Destination:
    """The vetted destination of ``url``, or :class:`UnsafeUrl` saying why not.

    With no ``resolver`` a host name other than the machine's own is taken on trust (its
    ``address`` is empty) and only addresses are checked: what the API can know without a
    DNS lookup.
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
    named = host.lower() in allowlist.hosts
    target = _target(parts.path, parts.query)
    literal = _literal(host)
    if literal is None and not named and is_local_name(host, hosts_file):
        raise UnsafeUrl(
            f"the host {host[:255]!r} is a name of this machine (localhost or the hosts "
            "file); the webhook allowlist does not include it"
        )
    if literal is not None:
        addresses = [str(literal)]
    elif resolver is None:
        return Destination(url, parts.scheme, host, port, target, "")
    else:
        addresses = list(resolver(host, port))
    if not addresses:
        raise UnsafeUrl(f"the host {host[:255]!r} does not resolve")
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError as exc:
            raise UnsafeUrl(f"the host resolves to an unusable address {text!r}") from exc
        if not (named or is_public(address) or allowlist.allows(address)):
            carried = carried_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else ()
            inside = f" (carrying {', '.join(map(str, carried))})" if carried else ""
            raise UnsafeUrl(
                f"the host resolves to {address}{inside}, a non-public address (loopback, "
                "private, link-local, multicast or reserved); the webhook allowlist does not "
                "include it"
            )
    return Destination(url, parts.scheme, host, port, target, addresses[0])


def _literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, None for a name; UnsafeUrl for what is neither."""
    if _NOT_IN_A_HOST.search(host):
        raise UnsafeUrl("the host has characters no host name has")
    address = parse_address(host)
    if address is None and _NUMERIC_LABEL.match(host.rsplit(".", 1)[-1]):
        raise UnsafeUrl(f"the host {host[:255]!r} is neither a name nor a valid address")
    return address


def _target(path: str, query: str) -> str:
    return (path or "/") + ("?" + query if query else "")
