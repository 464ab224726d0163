"""The SSRF guard's decisions and webhook signatures, without any network."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from inferq.core.errors import UnsafeUrl
from inferq.domain.ssrf import (
    Allowlist,
    carried_ipv4,
    check_url,
    hosts_file_names,
    is_local_name,
    parse_address,
)
from inferq.domain.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    backoff_s,
    new_secret,
    signed_headers,
    verify,
)

NONE = Allowlist()


def resolver(*addresses: str):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> Sequence[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize(
    "url",
    [
        "ftp://93.184.215.14/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "gopher://93.184.215.14:70/",
        "http://user:pass@93.184.215.14/",
        "http:///path-only",
        "http://93.184.215.14:99999/",
        "http://127.0.0.1/",
        "http://127.1.2.3:8080/",
        "http://0.0.0.0/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://224.0.0.1/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
        "https://" + "a" * 2050 + ".com/",
    ],
)
def test_unsafe_urls_are_refused_without_dns(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_url(url, NONE, resolver=None)


# Every spelling of loopback (and friends) that some resolver or some router reads as one:
# (URL, the address it must be read as, or None for a name refused without DNS).
FORMS = [
    # inet_aton: one to four parts, decimal, octal (leading 0) or hex (0x)
    ("http://2130706433/", "127.0.0.1"),
    ("http://0177.0.0.1/", "127.0.0.1"),
    ("http://0x7f.0.0.1/", "127.0.0.1"),
    ("http://0X7F.1/", "127.0.0.1"),
    ("http://127.1/", "127.0.0.1"),
    ("http://127.0.1/", "127.0.0.1"),
    ("http://0x7f000001/", "127.0.0.1"),
    ("http://017700000001/", "127.0.0.1"),
    ("http://0/", "0.0.0.0"),
    ("http://10.1/", "10.0.0.1"),
    ("http://0xa9.0xfe.0xa9.0xfe/", "169.254.169.254"),
    ("http://2852039166/", "169.254.169.254"),
    ("http://127.0.0.1./", "127.0.0.1"),
    # the machine's own names
    ("http://localhost/", None),
    ("http://LOCALHOST./", None),
    ("http://api.localhost:8080/", None),
    ("http://localhost.localdomain/", None),
    ("http://ip6-localhost/", None),
    # IPv6 carrying IPv4, judged by the IPv4 carried
    ("http://[::127.0.0.1]/", "::7f00:1"),  # IPv4-compatible
    ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1"),  # IPv4-mapped
    ("http://[::ffff:0:10.0.0.1]/", "::ffff:0:a00:1"),  # IPv4-translated
    ("http://[64:ff9b::7f00:1]/", "64:ff9b::7f00:1"),  # NAT64
    ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe"),  # NAT64 to the metadata service
    ("http://[64:ff9b:1::7f00:1]/", "64:ff9b:1::7f00:1"),  # local-use NAT64, /96 layout
    ("http://[64:ff9b:1:7f00:0:100::]/", "64:ff9b:1:7f00:0:100::"),  # local-use, /48 layout
    ("http://[2002:7f00:1::]/", "2002:7f00:1::"),  # 6to4
    ("http://[2002:a00:1::1]/", "2002:a00:1::1"),  # 6to4 to 10.0.0.1
    ("http://[2001:0:7f00:1:0:0:f5ff:fffe]/", "2001:0:7f00:1::f5ff:fffe"),  # Teredo, server
    ("http://[2001:0:5db8:d70e::80ff:fffe]/", "2001:0:5db8:d70e::80ff:fffe"),  # Teredo, client
]


@pytest.mark.parametrize(("url", "address"), FORMS)
def test_every_spelling_of_a_private_address_is_refused_at_submit(
    url: str, address: str | None
) -> None:
    with pytest.raises(UnsafeUrl) as refused:
        check_url(url, NONE, resolver=None)
    reason = str(refused.value)
    assert ("non-public" in reason and address in reason) if address else "this machine" in reason


@pytest.mark.parametrize(
    "address",
    [address for _, address in FORMS if address and ":" in address]
    + ["::1", "::", "64:ff9b::a00:1", "2002:c0a8:101::"],
)
def test_a_name_resolving_to_ipv6_that_carries_a_private_ipv4_is_refused_at_delivery(
    address: str,
) -> None:
    with pytest.raises(UnsafeUrl, match="non-public"):
        check_url("https://hooks.example.com/x", NONE, resolver=resolver(address))


@pytest.mark.parametrize(
    "host",
    ["93.184.215.14", "1572394766", "0x5d.0xb8.0xd7.0x0e", "0135.0270.0327.016", "93.12113678"],
)
def test_public_addresses_pass_in_every_spelling(host: str) -> None:
    assert check_url(f"http://{host}/", NONE, resolver=None).address == "93.184.215.14"


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:93.184.215.14",
        "64:ff9b::5db8:d70e",
        "2002:5db8:d70e::1",
        "2001:0:5db8:d70e::a247:28f1",
    ],
)
def test_ipv6_carrying_a_public_ipv4_passes(address: str) -> None:
    import ipaddress

    vetted = check_url(f"http://[{address}]/x", NONE, resolver=None).address
    assert ipaddress.ip_address(vetted) == ipaddress.ip_address(address)


def test_local_use_nat64_passes_only_when_every_layout_reads_public() -> None:
    # the operator picks where the IPv4 sits in 64:ff9b:1::/48; here the /48 layout reads 0.0.0.0
    with pytest.raises(UnsafeUrl, match="non-public"):
        check_url("http://[64:ff9b:1::5db8:d70e]/", NONE, resolver=None)


def test_parse_address_reads_numbers_as_inet_aton_does() -> None:
    import socket

    for text in ("2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1", "0", "1.2.3", "0xff.0377.1"):
        address = parse_address(text)
        assert address is not None and address.packed == socket.inet_aton(text), text
    for text in ("256.1.1.1", "1.2.3.4.5", "08", "0x", "1..2", "4294967296", "example.com", ""):
        assert parse_address(text) is None, text


def test_carried_ipv4_reads_each_form() -> None:
    import ipaddress

    def carried(text: str) -> list[str]:
        return [str(a) for a in carried_ipv4(ipaddress.IPv6Address(text))]

    assert carried("64:ff9b::7f00:1") == ["127.0.0.1"]
    assert carried("2002:7f00:1::") == ["127.0.0.1"]
    assert carried("2001:0:4136:e378:8000:63bf:3fff:fdd2") == ["65.54.227.120", "192.0.2.45"]
    assert "127.0.0.1" in carried("64:ff9b:1:7f00:0:100::")
    assert carried("2606:4700::1111") == []


def test_every_hosts_file_name_is_refused_unless_allowlisted(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n127.0.0.1 localhost\n10.0.0.5 db.internal db  # the db\n")
    assert hosts_file_names(hosts) == {"localhost", "db.internal", "db"}
    for name in ("db", "DB.internal.", "db.internal"):
        assert is_local_name(name, hosts)
        with pytest.raises(UnsafeUrl, match="this machine"):
            check_url(f"http://{name}/", NONE, resolver=None, hosts_file=hosts)
    assert not is_local_name("db.example.com", hosts)
    allowed = Allowlist.parse("db.internal")
    assert check_url("http://db.internal/", allowed, resolver=None, hosts_file=hosts).address == ""
    # and this machine's own /etc/hosts, whatever it holds
    for name in hosts_file_names():
        with pytest.raises(UnsafeUrl):
            check_url(f"http://{name}/", NONE, resolver=None)


@pytest.mark.parametrize("host", ["1.2.3.4.5", "256.0.0.1", "hooks.123", "0x7g.1"])
def test_a_numeric_host_that_is_no_address_is_refused(host: str) -> None:
    with pytest.raises(UnsafeUrl, match="neither a name nor a valid address"):
        check_url(f"http://{host}/", NONE, resolver=None)


def test_public_addresses_and_unresolved_names_pass_the_submit_check() -> None:
    assert check_url("https://93.184.215.14/hook?a=1", NONE, resolver=None).target == "/hook?a=1"
    named = check_url("https://hooks.example.com/x", NONE, resolver=None)
    assert named.address == "" and named.host_header == "hooks.example.com"


@pytest.mark.parametrize(
    "addresses",
    [("10.1.2.3",), ("93.184.215.14", "127.0.0.1"), ("fd00::5",), ("169.254.169.254",)],
)
def test_a_name_resolving_to_any_private_address_is_refused(addresses: tuple[str, ...]) -> None:
    with pytest.raises(UnsafeUrl, match="non-public"):
        check_url("https://hooks.example.com/x", NONE, resolver=resolver(*addresses))


def test_the_vetted_address_is_the_one_to_connect_to() -> None:
    destination = check_url(
        "http://hooks.example.com:8080/x", NONE, resolver=resolver("93.184.215.14")
    )
    assert destination.address == "93.184.215.14"
    assert destination.host_header == "hooks.example.com:8080"


def test_the_allowlist_admits_networks_and_names() -> None:
    allow = Allowlist.parse("127.0.0.1, 10.0.0.0/8 ,hooks.internal")
    assert check_url("http://127.0.0.1:9000/", allow).address == "127.0.0.1"
    assert check_url("http://x.corp/", allow, resolver=resolver("10.2.3.4")).address == "10.2.3.4"
    assert check_url("http://hooks.internal/", allow, resolver=resolver("192.168.0.9")).address
    with pytest.raises(UnsafeUrl):
        check_url("http://127.0.0.2/", allow)


def test_an_unresolvable_name_is_refused_at_delivery() -> None:
    with pytest.raises(UnsafeUrl, match="resolve"):
        check_url("http://x.invalid/", NONE, resolver=resolver())


def test_signatures_verify_and_tampering_or_replay_fails() -> None:
    secret, body = new_secret(), b'{"id":"evt_1"}'
    headers = signed_headers(secret, "evt_1", body)
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body + b" ")
    assert not verify(new_secret(), headers, body)
    assert not verify(secret, {**headers, TIMESTAMP_HEADER: str(int(time.time()) + 1)}, body)
    old = signed_headers(secret, "evt_1", body, now=time.time() - 600)
    assert not verify(secret, old, body)
    assert not verify(secret, {**headers, SIGNATURE_HEADER: "v1=00"}, body)
    assert not verify(secret, {}, body)


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(n, 5.0) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert backoff_s(40, 5.0) == 3600.0
