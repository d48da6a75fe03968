"""Small builders shared by the DB-backed tests."""

import uuid
from collections.abc import Iterator
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
