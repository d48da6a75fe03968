"""PURE: the hash chain. Each event's hash covers its content and the previous event's hash, so
editing, deleting or reordering history anywhere in a hazard's chain is detectable."""

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

GENESIS = "0" * 64


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _norm(value: Any) -> Any:
    # exact-type checks first: every audit event of a push batch goes through here (~10 values each)
    t = type(value)
    if t in _PLAIN:
        return value
    if t is dict:
        return {k if type(k) is str else str(k): _norm(v) for k, v in value.items()}
    if t is list:
        return [_norm(v) for v in value]
    if isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds")
    if isinstance(value, Mapping):
        return {str(k): _norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


def canonical(fields: Mapping[str, Any]) -> bytes:
    """Stable bytes for hashing: sorted keys, UTC times, no whitespace."""
    return _dumps(_norm(fields))


def _dumps(value: Any) -> bytes:
    """The chain's JSON: ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
    in UTF-8. orjson writes the very same bytes ten times faster for every value whose floats lie in
    1e-4..1e16 (outside it Python writes 1e-05, orjson 0.00001) and whose ints fit in 64 bits, so it
    is used for those (tests/referrals/test_chain_bytes.py holds the two to the same bytes)."""
    if _orjson_agrees(value):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _orjson_agrees(value: Any) -> bool:
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return -(1 << 63) <= value < (1 << 64)
    if t is float:
        return value == 0 or 1e-4 <= abs(value) < 1e16  # NaN and infinities fail both tests
    if t is dict:
        return all(type(k) is str and _orjson_agrees(v) for k, v in value.items())
    if t is list:
        return all(_orjson_agrees(v) for v in value)
    return False  # anything else: json.dumps decides (and raises for what it cannot write)


def jsonable(value: Any) -> Any:
    """What the event's JSON data column stores (times as ISO strings), so stored and hashed agree."""
    return _norm(value)


def event_hash(prev_hash: str, fields: Mapping[str, Any], normalized: bool = False) -> str:
    """normalized=True: the fields are already JSON-ready (see jsonable), skip the second walk."""
    body = _dumps(fields) if normalized else canonical(fields)
    return hashlib.sha256(prev_hash.encode() + b"\n" + body).hexdigest()


HASHED_FIELDS = ("hazard_id", "seq", "kind", "actor_user_id", "actor_unit_id", "device_id", "server_time",
                 "device_time", "data", "flagged")


@dataclass(frozen=True)
class ChainProblem:
    hazard_id: str
    seq: int | None
    problem: str


def verify_chain(hazard_id: str, events: Iterable[Mapping[str, Any]], head_hash: str, head_seq: int) -> list[ChainProblem]:
    """Check one hazard's events (in seq order) against each other and against the hazard's stored head."""
    problems: list[ChainProblem] = []
    prev, expected_seq = GENESIS, 1
    for ev in events:
        if ev["seq"] != expected_seq:
            problems.append(ChainProblem(hazard_id, ev["seq"], f"expected event {expected_seq}, found {ev['seq']}"))
        if ev["prev_hash"] != prev:
            problems.append(ChainProblem(hazard_id, ev["seq"], "previous-hash link broken"))
        recomputed = event_hash(ev["prev_hash"], {k: ev[k] for k in HASHED_FIELDS})
        if recomputed != ev["hash"]:
            problems.append(ChainProblem(hazard_id, ev["seq"], "content does not match its hash (edited)"))
        prev, expected_seq = ev["hash"], ev["seq"] + 1
    if prev != head_hash or expected_seq - 1 != head_seq:
        problems.append(ChainProblem(hazard_id, None, "chain head does not match the hazard (events removed or added)"))
    return problems
