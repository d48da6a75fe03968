"""PURE: the hash chain. Each event's hash covers its content and the previous event's hash, so
editing, deleting or reordering history anywhere in a hazard's chain is detectable."""

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

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
    return json.dumps(_norm(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def jsonable(value: Any) -> Any:
    """What the event's JSON data column stores (times as ISO strings), so stored and hashed agree."""
    return _norm(value)


def event_hash(prev_hash: str, fields: Mapping[str, Any], normalized: bool = False) -> str:
    """normalized=True: the fields are already JSON-ready (see jsonable), skip the second walk."""
    body = (json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() if normalized
            else canonical(fields))
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
