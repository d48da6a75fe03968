"""Small builders shared by the DB-backed tests."""

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import sqlalchemy as sa

from sqlmodel import Session, select

from app.places.models import Place


def uid() -> str:
    return str(uuid.uuid4())


def place_of(session: Session, units: dict, grid_code: str, place_class: str) -> Place:
    place = session.exec(select(Place).where(Place.grid_id == units[grid_code].id, Place.place_class == place_class)).first()
    if place is None:  # the demo spreads classes over grids; make one where the test needs it
        grid = units[grid_code]
        place = Place(id=uid(), name=f"测试{place_class}", address="测试路1号", grid_id=grid.id, town_id=grid.town_id,
                      community_id=grid.community_id, place_class=place_class)
        session.add(place)
        session.commit()
    return place


def hazard_data(place_id: str, found_at: datetime, **kw) -> dict:
    return {"id": uid(), "place_id": place_id, "category": kw.pop("category", "ebike_indoor"),
            "severity": kw.pop("severity", "general"), "violation": kw.pop("violation", False),
            "description": kw.pop("description", "楼道内电动自行车充电"), "found_at": found_at.isoformat(),
            "photos": kw.pop("photos", ["a" * 64]), **kw}


def push(client, headers, *ops) -> list[dict]:
    r = client.post("/api/v1/sync/push", json={"ops": list(ops)}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def op(type_: str, data: dict, op_id: str | None = None) -> dict:
    return {"op_id": op_id or uid(), "type": type_, "data": data}


def report(client, headers, place_id: str, found_at: datetime, **kw) -> dict:
    [res] = push(client, headers, op("hazard.report", hazard_data(place_id, found_at, **kw)))
    assert res["status"] == "applied", res
    return res["result"]


@contextmanager
def statements_on(connection: sa.Connection) -> Iterator[list[str]]:
    """The SQL statements run on ``connection`` meanwhile, without the test database's savepoints."""
    seen: list[str] = []

    def listener(conn, cursor, statement, *args) -> None:
        if not statement.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
            seen.append(statement)

    sa.event.listen(connection, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        sa.event.remove(connection, "before_cursor_execute", listener)


def race_behind_lock(engine: sa.Engine, held: Session, writer: Session, write: Callable[[], object]) -> object:
    """PostgreSQL: run ``write`` on ``writer`` and commit it, in a thread; commit ``held`` (a transaction left
    open, holding locks) once the writer waits for a lock or is done; fail if the writer failed. Returns what
    ``write`` returned. The sessions stay open: the caller closes them."""
    pid = writer.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    out: list = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(write())
            writer.commit()
        except BaseException as exc:  # reported below
            errors.append(exc)
            writer.rollback()

    t = threading.Thread(target=run)
    t.start()
    try:
        with engine.connect() as watch:
            for _ in range(400):
                waiting = watch.execute(sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p"),
                                        {"p": pid}).scalar()
                if waiting == "Lock" or not t.is_alive():
                    break
                time.sleep(0.02)
        held.commit()
    finally:
        t.join(30)
    assert not t.is_alive(), "the writer never finished"
    assert not errors, errors
    return out[0]
