"""Appending events to a hazard's chain, and verifying every chain."""

import gzip
import hmac
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from app.audit.chain import GENESIS, ChainProblem, derive_key, event_hash, event_mac, jsonable, verify_chain
from app.audit.models import HazardEvent
from app.config import DEFAULT_SECRET, Settings
from app.db import insert_rows

# The key new events are sealed with, set from the settings as the app or a CLI command starts
# (use_settings). Module state rather than an argument: events are made deep inside the referral and
# sync code, often before a session exists (a push plans them ahead), and one process serves one
# configuration. Until set: the development default's, as the settings' own default.
_key: bytes = derive_key(None, DEFAULT_SECRET)


def audit_key(settings: Settings) -> bytes:
    return derive_key(settings.audit_key, settings.secret_key)


def use_settings(settings: Settings) -> None:
    global _key
    _key = audit_key(settings)


@dataclass(frozen=True)
class Actor:
    """Who did it: a person on a device, or the system (sweep) with neither."""

    user_id: str | None = None
    unit_id: str | None = None
    device_id: str | None = None

    @classmethod
    def system(cls) -> "Actor":
        return cls()


def event_row(hazard, kind: str, actor: Actor, now: datetime, data: dict[str, Any] | None = None,
              device_time: datetime | None = None, flagged: bool = False) -> dict[str, Any]:
    """The next event of the hazard's chain as a row; advances the hazard's head (seq, hash) in memory.

    The hazard row is written in the same transaction under its version check, so two writers can
    never both extend the same head.
    """
    fields = {
        "hazard_id": hazard.id,
        "seq": hazard.event_seq + 1,
        "kind": kind,
        "actor_user_id": actor.user_id,
        "actor_unit_id": actor.unit_id,
        "device_id": actor.device_id,
        "server_time": now,
        "device_time": device_time,
        "data": jsonable(data or {}),
        "flagged": flagged,
    }
    prev = hazard.last_event_hash or GENESIS
    hashed = dict(fields, server_time=jsonable(now), device_time=jsonable(device_time))
    digest = event_hash(prev, hashed, normalized=True)
    hazard.event_seq += 1
    hazard.last_event_hash = digest
    return {**fields, "prev_hash": prev, "hash": digest, "mac": event_mac(_key, digest)}


def insert_events(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        insert_rows(session, HazardEvent.__table__, rows)


def timeline(session: Session, hazard_id: str) -> list[HazardEvent]:
    return session.exec(select(HazardEvent).where(HazardEvent.hazard_id == hazard_id).order_by(HazardEvent.seq)).all()


def _snapshot(session: Session) -> None:
    """PostgreSQL: the transaction about to begin reads one snapshot. A hazard's head and its events are
    read by separate statements; under READ COMMITTED an event committed between the two by a running
    server made an intact chain look cut. (SQLite's read transaction is one snapshot already.)"""
    if session.get_bind().dialect.name == "postgresql" and not session.in_transaction():
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def verify_all(session: Session, key: bytes | None = None, batch: int = 5000) -> Iterator[ChainProblem | int]:
    """Yields every problem found (with ``key``, unsealed events and broken seals too), and events whose
    hazard row is gone; finally yields the number of hazards checked. Call it on a fresh session: it
    reads one snapshot."""
    from app.hazards.models import Hazard

    _snapshot(session)
    checked = 0
    last_id = ""
    while True:
        heads = session.execute(
            select(Hazard.id, Hazard.last_event_hash, Hazard.event_seq).where(Hazard.id > last_id).order_by(Hazard.id).limit(batch)
        ).all()
        if not heads:
            break
        ids = [h.id for h in heads]
        unreadable: set[str] = set()
        try:
            events = _events_of(session, ids)
        except ValueError:  # an event's data no longer JSON (edited in place): find whose, check the rest
            events = {}
            for hazard_id in ids:
                try:
                    events.update(_events_of(session, [hazard_id]))
                except ValueError:
                    unreadable.add(hazard_id)
        for h in heads:
            if h.id in unreadable:
                yield ChainProblem(h.id, None, "an event's data is not JSON any more (edited)")
            else:
                yield from verify_chain(h.id, events[h.id], h.last_event_hash or GENESIS, h.event_seq, key=key)
            checked += 1
        last_id = ids[-1]
    # a hazard row deleted behind its events' back (the sqlite3 shell does not check foreign keys)
    events_t = HazardEvent.__table__
    for hazard_id in session.execute(
            sa.select(events_t.c.hazard_id).where(~sa.exists().where(Hazard.id == events_t.c.hazard_id))
            .group_by(events_t.c.hazard_id).order_by(events_t.c.hazard_id)).scalars():
        yield ChainProblem(hazard_id, None, "events of a hazard whose row is gone (deleted)")
    yield checked


def _events_of(session: Session, ids: list[str]) -> dict[str, list[dict]]:
    events: dict[str, list[dict]] = {i: [] for i in ids}
    for ev in session.execute(
        select(HazardEvent.__table__).where(HazardEvent.hazard_id.in_(ids)).order_by(HazardEvent.hazard_id, HazardEvent.seq)
    ).mappings():
        events[ev["hazard_id"]].append(ev)
    return events


@dataclass
class SealReport:
    sealed: int = 0  # events
    refused: list[ChainProblem] | None = None  # problems of chains left unsealed


def seal_unsealed(open_session: Callable[[], Session], key: bytes, batch: int = 500) -> SealReport:
    """Seal the events stored before seals existed (migration 0020), hazard by hazard, and only where
    the hazard's chain verifies: a seal must not bless an edit made before it. Those left unsealed are
    reported, and `audit verify` goes on naming them.

    Only events older than every sealed one are taken for such: the server seals each event as it writes
    it, so an unsealed event after the first sealed one had its seal removed (someone who rewrote it and
    hoped this would seal the forgery), and so has a hazard whose existing seals do not match. Run once,
    at the upgrade (`firegrid migrate` does it in the run that adds seals); a later run seals nothing new
    unless seals were removed from the oldest events as well, which an anchor then shows.

    ``open_session``: a new write session per batch (each commits), so that it can run beside a server."""
    from app.hazards.models import Hazard

    report = SealReport(refused=[])
    events_t = HazardEvent.__table__
    with open_session() as session:
        first_sealed = session.execute(sa.select(sa.func.min(events_t.c.id)).where(events_t.c.mac.is_not(None))).scalar()
    last_id = ""
    while True:
        with open_session() as session:
            _snapshot(session)
            ids = session.execute(
                sa.select(events_t.c.hazard_id).where(events_t.c.mac.is_(None), events_t.c.hazard_id > last_id)
                .group_by(events_t.c.hazard_id).order_by(events_t.c.hazard_id).limit(batch)
            ).scalars().all()
            if not ids:
                return report
            heads = {h.id: h for h in session.execute(
                select(Hazard.id, Hazard.last_event_hash, Hazard.event_seq).where(Hazard.id.in_(ids))).all()}
            events = _events_of(session, ids)
            seals = []
            for hazard_id in ids:
                problems = _unsealable(hazard_id, heads.get(hazard_id), events[hazard_id], key, first_sealed)
                if problems:
                    report.refused.extend(problems)
                    continue
                seals.extend({"event_id": ev["id"], "seal": event_mac(key, ev["hash"])}
                             for ev in events[hazard_id] if ev["mac"] is None)
            if seals:
                session.execute(sa.update(events_t).where(events_t.c.id == sa.bindparam("event_id"), events_t.c.mac.is_(None))
                                .values(mac=sa.bindparam("seal")), seals)
                report.sealed += len(seals)
            session.commit()
        last_id = ids[-1]


def _unsealable(hazard_id: str, head, events: list[dict], key: bytes, first_sealed: int | None) -> list[ChainProblem]:
    """Why this hazard's unsealed events must not be sealed (none: they may)."""
    if head is None:
        return [ChainProblem(hazard_id, None, "events of a hazard whose row is gone (deleted)")]
    late = [ev for ev in events if ev["mac"] is None and first_sealed is not None and ev["id"] > first_sealed]
    if late:
        return [ChainProblem(hazard_id, ev["seq"], "not sealed, though written after seals began: its seal was "
                             "removed") for ev in late]
    problems = verify_chain(hazard_id, events, head.last_event_hash or GENESIS, head.event_seq, key=key)
    return [p for p in problems if not p.problem.startswith("not sealed")]


# -- anchors: the heads, kept outside the database ---------------------------------------------------
# Seals catch an edited event, but not a hazard deleted with all its events, nor a chain cut back to an
# earlier event with its head: what is left verifies. An anchor is every hazard's head at one moment,
# written out of the database (a daily cron to another machine); `audit verify --anchor` then checks that
# each anchored event is still there, unchanged. The file is sealed as a whole with the audit key.

ANCHOR_MAGIC = "firegrid-audit-anchor v1"


class AnchorError(ValueError):
    """The anchor file is not one: named with its line."""


def write_anchor(session: Session, key: bytes, out, now: datetime, batch: int = 5000) -> int:
    """Writes the anchor to the text stream ``out``; returns the number of hazards in it."""
    from app.hazards.models import Hazard

    mac = hmac.new(key, digestmod="sha256")

    def emit(line: str) -> None:
        data = line + "\n"
        mac.update(data.encode())
        out.write(data)

    emit(f"{ANCHOR_MAGIC} {now.isoformat()}")
    n, last_id = 0, ""
    while True:
        heads = session.execute(
            select(Hazard.id, Hazard.event_seq, Hazard.last_event_hash)
            .where(Hazard.id > last_id, Hazard.event_seq > 0).order_by(Hazard.id).limit(batch)).all()
        if not heads:
            break
        for h in heads:
            emit(f"{h.id} {h.event_seq} {h.last_event_hash}")
        n += len(heads)
        last_id = heads[-1].id
    out.write(f"seal {n} {mac.hexdigest()}\n")
    return n


def open_anchor(path: Path, mode: str = "rt", gzipped: bool | None = None):
    """An anchor file, gzipped if its name ends in .gz (a county's is ~100 bytes a hazard)."""
    if path.suffix == ".gz" if gzipped is None else gzipped:
        return gzip.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def check_anchor(session: Session, key: bytes, path: Path, batch: int = 2000) -> Iterator[ChainProblem | int]:
    """Every anchored event still in the database, unchanged; finally yields the number of hazards checked.
    A file that is not an anchor, or not one sealed with this key, raises AnchorError before anything is
    reported from its lines (read twice: the seal first, then the events, so a county's anchor is never
    held in memory whole)."""
    with open_anchor(path) as f:
        count = _check_anchor_seal(key, f)
    from app.hazards.models import Hazard

    events_t = HazardEvent.__table__
    _snapshot(session)
    with open_anchor(path) as f:
        entries = (_anchor_entry(line) for no, line in enumerate(f, 1) if no > 1 and not line.startswith("seal "))
        while chunk := list(itertools.islice(entries, batch)):
            # the event, and its hazard still there with a chain at least that long: events whose hazard row
            # was deleted (foreign keys off) do not count as there
            found = dict(((r.hazard_id, r.seq), r.hash) for r in session.execute(
                sa.select(events_t.c.hazard_id, events_t.c.seq, events_t.c.hash)
                .join(Hazard, Hazard.id == events_t.c.hazard_id)
                .where(sa.tuple_(events_t.c.hazard_id, events_t.c.seq).in_([(h, s) for h, s, _ in chunk]),
                       Hazard.event_seq >= events_t.c.seq)))
            for hazard_id, seq, digest in chunk:
                now = found.get((hazard_id, seq))
                if now is None:
                    yield ChainProblem(hazard_id, seq, "anchored event is gone (deleted, or the chain cut back)")
                elif now != digest:
                    yield ChainProblem(hazard_id, seq, "anchored event has another hash now (rewritten)")
    yield count


def _anchor_entry(line: str) -> tuple[str, int, str] | None:
    parts = line.split()
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[2]) != 64:
        return None
    return parts[0], int(parts[1]), parts[2]


def _check_anchor_seal(key: bytes, lines: Iterable[str]) -> int:
    """The number of hazards the anchor holds, once its form and seal are checked (else AnchorError)."""
    mac = hmac.new(key, digestmod="sha256")
    count = 0
    sealed = False
    for no, line in enumerate(lines, 1):
        if sealed:
            raise AnchorError(f"line {no}: text after the seal")
        if no == 1:
            if not line.startswith(ANCHOR_MAGIC + " "):
                raise AnchorError(f"line 1: not a Firegrid audit anchor (it starts {line[:40]!r})")
            mac.update(line.encode())
            continue
        if line.startswith("seal "):
            parts = line.split()
            if len(parts) != 3 or parts[1] != str(count):
                raise AnchorError(f"line {no}: the seal line does not count the {count} hazards above it")
            if not hmac.compare_digest(parts[2], mac.hexdigest()):
                raise AnchorError("the anchor's seal does not match: edited, or sealed with another audit key")
            sealed = True
            continue
        if _anchor_entry(line) is None:
            raise AnchorError(f"line {no}: expected 'hazard_id seq hash'")
        mac.update(line.encode())
        count += 1
    if not sealed:
        raise AnchorError("the anchor ends without its seal line (cut short)")
    return count
