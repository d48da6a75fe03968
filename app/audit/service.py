"""Appending events to a hazard's chain, and verifying every chain."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from app.audit.chain import GENESIS, ChainProblem, event_hash, jsonable, verify_chain
from app.audit.models import HazardEvent
from app.db import insert_rows


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
    return {**fields, "prev_hash": prev, "hash": digest}


def insert_events(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        insert_rows(session, HazardEvent.__table__, rows)


def timeline(session: Session, hazard_id: str) -> list[HazardEvent]:
    return session.exec(select(HazardEvent).where(HazardEvent.hazard_id == hazard_id).order_by(HazardEvent.seq)).all()


def verify_all(session: Session, batch: int = 5000) -> Iterator[ChainProblem | int]:
    """Yields every problem found; finally yields the number of hazards checked."""
    from app.hazards.models import Hazard

    checked = 0
    last_id = ""
    while True:
        heads = session.execute(
            select(Hazard.id, Hazard.last_event_hash, Hazard.event_seq).where(Hazard.id > last_id).order_by(Hazard.id).limit(batch)
        ).all()
        if not heads:
            break
        ids = [h.id for h in heads]
        events: dict[str, list[dict]] = {i: [] for i in ids}
        for ev in session.execute(
            select(HazardEvent.__table__).where(HazardEvent.hazard_id.in_(ids)).order_by(HazardEvent.hazard_id, HazardEvent.seq)
        ).mappings():
            events[ev["hazard_id"]].append(ev)
        for h in heads:
            yield from verify_chain(h.id, events[h.id], h.last_event_hash or GENESIS, h.event_seq)
            checked += 1
        last_id = ids[-1]
    yield checked
