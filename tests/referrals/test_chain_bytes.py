"""The audit chain hashes JSON bytes; taking orjson's fast path must never change a single byte
from the definition, json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)."""

import json
import math
import random

import pytest

from app.audit import chain


def definition(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


TEXT = "".join(chr(i) for i in range(0x80)) + "\u2028\u2029\u00e9楼道堆放杂物\U0001f525\\\"/"


def random_value(rnd: random.Random, depth: int = 0):
    kind = rnd.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rnd.random() < 0.5
    if kind == 2:
        return rnd.choice([0, 1, -1, 2**31, -(2**63), 2**63, 2**64 - 1, 2**64, -(2**70), rnd.randrange(-10**6, 10**6)])
    if kind == 3:
        magnitude = 10 ** rnd.uniform(-8, 20)
        return rnd.choice([-1, 1]) * float(f"{magnitude:.{rnd.randint(1, 17)}g}")
    if kind == 4:
        return rnd.choice([0.0, -0.0, 1e-4, 9.99e-5, 1e16, 9999999999999998.0, 29.35, 105.92, math.inf, -math.inf])
    if kind == 5:
        return "".join(rnd.choice(TEXT) for _ in range(rnd.randrange(12)))
    if kind == 6:
        return [random_value(rnd, depth + 1) for _ in range(rnd.randrange(5))]
    return {"".join(rnd.choice(TEXT) for _ in range(rnd.randrange(1, 6))): random_value(rnd, depth + 1)
            for _ in range(rnd.randrange(5))}


def test_the_fast_path_writes_the_defined_bytes_for_any_json_value():
    rnd = random.Random(20261123)
    fast = 0
    for _ in range(20000):
        value = random_value(rnd)
        assert chain._dumps(value) == definition(value), value
        fast += chain._orjson_agrees(value)
    assert fast > 5000  # the fast path was actually taken, not only the fallback


@pytest.mark.parametrize("value", [1e-05, 2.5e-7, math.nan, math.inf, 2**64, {"lat": 1e-05}, [1, [2, 1e-300]]])
def test_values_where_orjson_would_differ_take_the_definition(value):
    assert not chain._orjson_agrees(value)
    assert chain._dumps(value) == definition(value)
