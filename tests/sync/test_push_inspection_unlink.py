"""A hazard may name an inspection the server does not hold yet. When that inspection arrives and is of
another premises, the hazard loses the link (the inspection wins: it is the record of a visit to its own
premises); the hazard itself is kept as reported, the change goes to phones by the feed and into the
hazard's audit trail. A hazard of the inspection's own premises keeps its link.

Every case is tried the three ways of tests/sync/test_push_inspection_link.py."""

import pytest
import sqlalchemy as sa
from sqlmodel import select

from app.audit.models import HazardEvent
from app.inspections.models import Inspection
from tests.helpers import hazard_data, op, push
from tests.sync.test_pull import pull_all
from tests.sync.test_push import NOW, place, worker  # noqa: F401  (place, worker: fixtures)
from tests.sync.test_push_inspection_link import PATHS, _codes, _inspection, _other_place, _push_in_turn, _stored


def _kinds(session, hazard_id: str) -> list[str]:
    return session.exec(select(HazardEvent.kind).where(HazardEvent.hazard_id == hazard_id)
                        .order_by(HazardEvent.seq)).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("together", [True, False], ids=["one batch", "two batches"])
def test_an_inspection_of_another_premises_takes_the_link_from_hazards_that_named_it_early(
        clocked_client, worker, place, session, units, path, together, monkeypatch):
    inspection = _inspection(place.id)
    elsewhere = hazard_data(_other_place(session, units).id, NOW, inspection_id=inspection["id"])
    here = hazard_data(place.id, NOW, category="lpg_misuse", inspection_id=inspection["id"])
    ops = [op("hazard.report", elsewhere), op("hazard.report", here), op("inspection.submit", inspection)]
    results = _push_in_turn(clocked_client, worker, path, monkeypatch, together, *ops)
    assert _codes(results) == [("applied", None, None)] * 3, results
    assert session.get(Inspection, inspection["id"]) is not None
    moved = _stored(session, elsewhere["id"])
    assert moved.inspection_id is None and moved.version == 2
    assert moved.description == elsewhere["description"] and moved.photos == elsewhere["photos"]
    assert _kinds(session, elsewhere["id"])[-1] == "inspection_unlinked"
    kept = _stored(session, here["id"])
    assert kept.inspection_id == inspection["id"] and kept.version == 1
    assert "inspection_unlinked" not in _kinds(session, here["id"])
    # a re-sent report still gets its first answer
    [again] = push(clocked_client, worker, ops[0])
    assert again == {**results[0], "status": "duplicate"}


def test_phones_hear_that_the_link_is_gone(clocked_client, worker, place, session, units):
    inspection = _inspection(place.id)
    elsewhere = hazard_data(_other_place(session, units).id, NOW, inspection_id=inspection["id"])
    push(clocked_client, worker, op("hazard.report", elsewhere))
    _, cursor, _ = pull_all(clocked_client, worker)
    [r] = push(clocked_client, worker, op("inspection.submit", inspection))
    assert r["status"] == "applied", r
    changes, _, _ = pull_all(clocked_client, worker, cursor)  # the pusher's own phone too: the server decided
    [change] = [c for c in changes if c["type"] == "hazard" and c["id"] == elsewhere["id"]]
    assert change["deleted"] is False and change["data"]["inspection_id"] is None
    assert change["data"]["version"] == 2


def test_hazards_are_found_by_inspection_through_an_index(session):
    indexes = sa.inspect(session.connection()).get_indexes("hazards")
    assert [ix["column_names"] for ix in indexes if ix["name"] == "ix_hazards_inspection_id"] == [["inspection_id"]]
