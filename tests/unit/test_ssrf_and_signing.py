"""The SSRF guard's decisions and webhook signatures, without any network."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from inferq.core.errors import UnsafeUrl
from inferq.domain.ssrf import Allowlist, check_url
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
