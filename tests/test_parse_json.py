"""service/deps.py's parse_json: orjson reads flat objects, json.loads everything else, and
both give the same values (the HTTP errors are tests/test_http_surface.py's)."""

from __future__ import annotations

import json
import math

import pytest
from fastapi import HTTPException

from service import deps

BODIES = [
    b'{"queries": [[0.51182162, -0.9504637, 1e-3]], "top_k": 3, "rescore": 0}',
    b'{"items": [[1, 2.5, -0.0]], "mode": "each", "namespace": null, "pin": true}',
    b' {"a": 1.0000000000000002, "b": 0.1e1, "c": 1e-400, "d": "\\u0000x"}\n',
    b'{"texts": ["a", "b"], "ns": [[1, "x"], [null]], "top_k": 9223372036854775807}',
    b'{"top_k": 1234567890123456789012345}',  # json: an int; orjson: a float
    b'{"queries": [[0.5, -18446744073709551616]]}',  # the same, in a list of lists
    b'{"queries": [[NaN, Infinity, -Infinity]]}',  # json only
    b'{"a": 1e400}',  # json: inf; orjson refuses
    b'{"\\u0061": 1, "b": "say \\"b\\""}',  # escaped key, a key's name inside a value
    b'{"payloads": [{"x": 1}], "texts": ["{"]}',  # nested objects: json.loads
    b"[1, 2]",
]


@pytest.mark.parametrize("raw", BODIES)
def test_parse_json_equals_json_loads(raw: bytes) -> None:
    got, want = deps.parse_json(raw), json.loads(raw)
    assert repr(got) == repr(want)  # repr: NaN == NaN, ints stay ints, -0.0 stays signed
    if isinstance(want, dict) and "top_k" in want:
        assert type(got["top_k"]) is int


def test_flat_objects_take_orjson_and_the_rest_json() -> None:
    assert deps._flat_object(BODIES[0]) == json.loads(BODIES[0])
    second = deps._flat_object(BODIES[1])
    assert second is not None and math.copysign(1.0, second["items"][0][2]) == -1.0
    assert deps._flat_object(BODIES[3]) == json.loads(BODIES[3])  # 2^63 - 1: an int in both
    for raw in BODIES[4:]:
        assert deps._flat_object(raw) is None, raw


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"mode": "each", "items": [[1]], "mode": "mean"}', "mode"),
        (b'{"a": 1, "a": 1}', "a"),
    ],
)
def test_a_flat_object_with_a_key_twice_is_refused(raw: bytes, key: str) -> None:
    assert deps._flat_object(raw) is None  # orjson would keep the last value
    with pytest.raises(HTTPException) as e:
        deps.parse_json(raw)
    assert (e.value.status_code, e.value.detail) == (
        422,
        f"request body has a duplicate key {key!r}",
    )
