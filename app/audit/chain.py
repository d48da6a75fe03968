"""PURE: the hash chain. Each event's hash covers its content and the previous event's hash, so
editing, deleting or reordering history anywhere in a hazard's chain is detectable.

The hashes alone convince only someone who trusts the database: whoever can write it can rewrite an
event and every hash after it. So each event's hash is also sealed (``mac``) with a key the database
does not hold; rewriting history then needs the server's configuration as well."""

import hashlib
import hmac
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


def derive_key(audit_key: str | None, secret_key: str) -> bytes:
    """The sealing key, from FIREGRID_AUDIT_KEY, else from the secret key, in a domain of its own (the
    token pepper and the seal never share a value). So a server whose secret key changes keeps its seals
    by setting FIREGRID_AUDIT_KEY to the old secret key."""
    return hmac.digest((audit_key or secret_key).encode(), b"firegrid audit chain seal v1", "sha256")


def event_mac(key: bytes, event_hash_hex: str) -> str:
    """The seal of one event: its hash covers its content, its hazard, its place in the chain and the
    chain before it, so sealing the hash seals all of that."""
    return hmac.digest(key, event_hash_hex.encode(), "sha256").hex()


HASHED_FIELDS = ("hazard_id", "seq", "kind", "actor_user_id", "actor_unit_id", "device_id", "server_time",
                 "device_time", "data", "flagged")


@dataclass(frozen=True)
class ChainProblem:
    hazard_id: str
    seq: int | None
    problem: str


def verify_chain(hazard_id: str, events: Iterable[Mapping[str, Any]], head_hash: str, head_seq: int,
                 key: bytes | None = None) -> list[ChainProblem]:
    """Check one hazard's events (in seq order) against each other and against the hazard's stored head;
    with ``key``, each event's seal too (an event without one is a problem: seal_unsealed seals those
    stored before seals existed, and nothing since is written without)."""
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
        if key is not None:
            mac = ev.get("mac")
            if mac is None:
                problems.append(ChainProblem(hazard_id, ev["seq"], "not sealed: its seal was removed, or it was "
                                             "stored before seals and not sealed at the upgrade"))
            elif not (isinstance(mac, str) and mac.isascii() and isinstance(ev["hash"], str)
                      and hmac.compare_digest(mac, event_mac(key, ev["hash"]))):
                problems.append(ChainProblem(hazard_id, ev["seq"],
                                             "seal does not match (rewritten, or sealed with another audit key)"))
        prev, expected_seq = ev["hash"], ev["seq"] + 1
    if prev != head_hash or expected_seq - 1 != head_seq:
        problems.append(ChainProblem(hazard_id, None, "chain head does not match the hazard (events removed or added)"))
    return problems
