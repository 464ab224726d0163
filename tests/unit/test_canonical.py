"""The canonical JSON behind result-cache keys and compiled-validator caches."""

from __future__ import annotations

import hashlib

from inferq.core.canonical import canonical_json
from inferq.core.settings import Settings
from inferq.domain.result_cache import cache_key


def test_one_text_whatever_the_key_order_and_spacing() -> None:
    one = {"b": [1, {"y": 2, "x": 1}], "a": "é"}
    other = {"a": "é", "b": [1, {"x": 1, "y": 2}]}
    assert (
        canonical_json(one) == canonical_json(other) == '{"a":"é","b":[1,{"x":1,"y":2}]}'.encode()
    )


def test_an_integer_past_64_bits_is_written_exactly() -> None:
    # orjson refuses it; the standard library's encoder writes it, the same way every time.
    big = {"n": 2**70, "m": -(2**65)}
    assert canonical_json(big) == b'{"m":-36893488147419103232,"n":1180591620717411303424}'


def test_a_cache_key_ignores_key_order_and_integral_floats() -> None:
    settings = Settings.from_env({})
    key = cache_key(settings, 3, "ab" * 32, {"pixels": [1, 2.0], "scale": 1})
    assert key == cache_key(settings, 3, "ab" * 32, {"scale": 1.0, "pixels": [1.0, 2]})
    assert key != cache_key(settings, 3, "ab" * 32, {"scale": 1.5, "pixels": [1.0, 2]})
    digest = hashlib.sha256(b'{"pixels":[1,2],"scale":1}').hexdigest()
    assert key.endswith(f":3:{'ab' * 8}:{digest}")
    assert cache_key(settings, 3, "ab" * 32, {"n": 2**70}) != cache_key(
        settings, 3, "ab" * 32, {"n": 2**70 + 1}
    )
