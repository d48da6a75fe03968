"""An inspection lists a hazard the phone already sent on its own (reported at once during the inspection,
then listed again when the inspection was finished). The inspection and its checklist are kept, and the
hazard is the one recorded: not created twice, its answer the stored hazard's, linked to the inspection
when it named none (or this one), photos taken since added. Another user's hazard, or one of another
premises, under that id is a collision, refused as before but saying so.

Every case is tried the three ways of tests/sync/test_push_inspection_link.py."""

import pytest
from sqlmodel import func, select

from app.audit.models import HazardEvent
from app.auth.models import User
from app.hazards.models import Hazard
from app.inspections.models import Inspection
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push
from tests.sync.test_pull import pull_all
from tests.sync.test_push import NOW, place, worker  # noqa: F401  (place, worker: fixtures)
from tests.sync.test_push_inspection_link import PATHS, _codes, _inspection, _other_place, _push, _stored

PHOTO = "b" * 64


def _count(session, hazard_id: str) -> int:
    return session.exec(select(func.count()).select_from(Hazard).where(Hazard.id == hazard_id)).one()


def _events(session, hazard_id: str) -> list[HazardEvent]:
    return session.exec(select(HazardEvent).where(HazardEvent.hazard_id == hazard_id)
                        .order_by(HazardEvent.seq).execution_options(populate_existing=True)).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("named", [False, True], ids=["named none", "named this inspection"])
def test_an_inspection_listing_a_hazard_sent_before_is_kept_and_the_hazard_is_the_one_recorded(
        clocked_client, worker, place, session, path, named, monkeypatch):
    inspection = _inspection(place.id)
    inspection["checklist"] = [{"item": "ebike_indoor", "result": "fail", "note": "楼道充电"}]
    hz = hazard_data(place.id, NOW, **({"inspection_id": inspection["id"]} if named else {}))
    [first] = push(clocked_client, worker, op("hazard.report", hz))
    assert first["status"] == "applied", first
    listed = {**hz, "inspection_id": None, "photos": [*hz["photos"], PHOTO]}  # a photo taken since
    submit = op("inspection.submit", {**inspection, "hazards": [listed]})
    [r] = _push(clocked_client, worker, path, monkeypatch, submit)
    assert _codes([r]) == [("applied", None, None)], r
    assert r["result"] == {"inspection_id": inspection["id"], "hazards": [first["result"]]}
    stored = session.get(Inspection, inspection["id"])
    assert stored is not None and stored.checklist[0]["result"] == "fail"
    assert _count(session, hz["id"]) == 1
    h = _stored(session, hz["id"])
    assert h.inspection_id == inspection["id"] and h.photos == [*hz["photos"], PHOTO]
    assert h.version == 2
    [ev] = [e for e in _events(session, hz["id"]) if e.kind == "listed_in_inspection"]
    assert ev.data["inspection_id"] == inspection["id"] and ev.data["photos"] == [PHOTO]
    # re-sent, the inspection gets its first answer
    [again] = push(clocked_client, worker, submit)
    assert again == {**r, "status": "duplicate"}
    assert _count(session, hz["id"]) == 1
    # listed twice in one inspection, it is not the one recorded the second time: refused, as before
    twice = _inspection(place.id, listed, listed)
    [r2] = _push(clocked_client, worker, path, monkeypatch, op("inspection.submit", twice))
    assert _codes([r2]) == [("rejected", "hazard_exists", "data.hazards.1.id")], r2
    assert session.get(Inspection, twice["id"]) is None


@pytest.mark.parametrize("path", PATHS)
def test_a_report_and_the_inspection_listing_it_in_one_batch(clocked_client, worker, place, session, path,
                                                            monkeypatch):
    inspection = _inspection(place.id)
    hz = hazard_data(place.id, NOW)
    results = _push(clocked_client, worker, path, monkeypatch, op("hazard.report", hz),
                    op("inspection.submit", {**inspection, "hazards": [hz]}))
    assert _codes(results) == [("applied", None, None)] * 2, results
    assert results[1]["result"]["hazards"] == [results[0]["result"]]
    assert _count(session, hz["id"]) == 1 and session.get(Inspection, inspection["id"]) is not None
    assert _stored(session, hz["id"]).inspection_id == inspection["id"]


@pytest.mark.parametrize("path", PATHS)
def test_a_hazard_naming_another_inspection_keeps_it(clocked_client, worker, place, session, path, monkeypatch):
    """Listed again in a second inspection of the premises, the hazard keeps the first it was found in."""
    earlier = _inspection(place.id)
    hz = hazard_data(place.id, NOW)
    [r] = push(clocked_client, worker, op("inspection.submit", {**earlier, "hazards": [hz]}))
    assert r["status"] == "applied", r
    later = _inspection(place.id)
    [r2] = _push(clocked_client, worker, path, monkeypatch, op("inspection.submit", {**later, "hazards": [hz]}))
    assert _codes([r2]) == [("applied", None, None)], r2
    assert r2["result"]["hazards"] == r["result"]["hazards"]
    assert _stored(session, hz["id"]).inspection_id == earlier["id"]
    assert _count(session, hz["id"]) == 1 and session.get(Inspection, later["id"]) is not None


def test_the_link_reaches_phones_through_the_feed(clocked_client, worker, place, session, units):
    hz = hazard_data(place.id, NOW)
    push(clocked_client, worker, op("hazard.report", hz))
    other_phone = login(clocked_client, "worker-a1", device="phone-2")
    _, cursor, _ = pull_all(clocked_client, other_phone)
    _, own_cursor, _ = pull_all(clocked_client, worker)
    inspection = _inspection(place.id)
    [r] = push(clocked_client, worker, op("inspection.submit", {**inspection, "hazards": [hz]}))
    assert r["status"] == "applied", r
    for headers, since in ((other_phone, cursor), (worker, own_cursor)):  # the pusher too: the server linked it
        changes, _, _ = pull_all(clocked_client, headers, since)
        [change] = [c for c in changes if c["type"] == "hazard" and c["id"] == hz["id"]]
        assert change["deleted"] is False and change["data"]["inspection_id"] == inspection["id"]
        assert change["data"]["version"] == 2


@pytest.mark.parametrize("path", PATHS)
def test_another_users_hazard_is_still_refused_and_the_message_says_why(clocked_client, worker, place, session,
                                                                      path, monkeypatch):
    hz = hazard_data(place.id, NOW)
    push(clocked_client, worker, op("hazard.report", hz))
    h = _stored(session, hz["id"])
    h.reporter_user_id = session.exec(select(User.id).where(User.username == "worker-a2")).one()
    session.add(h)
    session.commit()
    inspection = _inspection(place.id, hz)
    [r] = _push(clocked_client, worker, path, monkeypatch, op("inspection.submit", inspection))
    assert _codes([r]) == [("rejected", "hazard_exists", "data.hazards.0.id")], r
    assert "another user" in r["error"]["message"]
    assert session.get(Inspection, inspection["id"]) is None
    assert _stored(session, hz["id"]).inspection_id is None


@pytest.mark.parametrize("path", PATHS)
def test_a_hazard_of_another_premises_is_still_refused(clocked_client, worker, place, session, units, path,
                                                       monkeypatch):
    elsewhere = _other_place(session, units)
    hz = hazard_data(elsewhere.id, NOW)
    push(clocked_client, worker, op("hazard.report", hz))
    inspection = _inspection(place.id, {**hz, "place_id": place.id})
    [r] = _push(clocked_client, worker, path, monkeypatch, op("inspection.submit", inspection))
    assert _codes([r]) == [("rejected", "hazard_exists", "data.hazards.0.id")], r
    assert "another premises" in r["error"]["message"]
    assert session.get(Inspection, inspection["id"]) is None
    assert _stored(session, hz["id"]).place_id == elsewhere.id


@pytest.mark.parametrize("path", PATHS)
def test_another_towns_hazard_is_refused_without_naming_it(clocked_client, worker, place, session, units, path,
                                                           monkeypatch):
    """Worker B's hazard id reused by worker A's phone: refused, and nothing of it is told."""
    theirs = place_of(session, units, "grid-b-1-1", "rental")
    hz = hazard_data(theirs.id, NOW)
    push(clocked_client, login(clocked_client, "worker-b1", device="phone-b"), op("hazard.report", hz))
    inspection = _inspection(place.id, {**hz, "place_id": place.id})
    [r] = _push(clocked_client, worker, path, monkeypatch, op("inspection.submit", inspection))
    assert _codes([r]) == [("rejected", "hazard_exists", "data.hazards.0.id")], r
    assert "another user" in r["error"]["message"] and theirs.id not in r["error"]["message"]
    assert session.get(Inspection, inspection["id"]) is None
