"""A standalone hazard.report names the inspection it was found in (``inspection_id``). That link is sent
to every phone that sees the hazard (the pull's hazard payload) and written in its audit trail: it may
name only an inspection of the hazard's own premises. One that exists elsewhere -- another premises,
grid or town, one the reporter could never see -- is rejected for that op alone; one not on the server
yet is accepted (phones send in any order), and so is the inspection that arrives after it.

Every batch is tried three ways: in bulk, in a batch that is not all creations (planned on the writer),
and op by op (as when the database refuses the bulk insert): they must give the same answers."""

from datetime import timedelta

import pytest
from sqlmodel import select

from app.hazards.models import Hazard
from app.inspections.models import Inspection
from app.places.models import Place
from app.sync import service
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push, uid
from tests.sync.test_push import NOW, place, worker  # noqa: F401  (place, worker: fixtures)

# bulk: planned as the endpoint plans a batch of this size (a small one on the writer); planned ahead: on a
# read transaction before the write one, as a batch of PLAN_AHEAD_MIN_OPS or more
PATHS = ("bulk", "planned ahead", "mixed", "op by op")


def _push(client, headers, path, monkeypatch, *ops) -> list[dict]:
    """The ops' results, sent the given way (the extra op of a mixed batch is rejected and left out)."""
    if path == "mixed":
        return push(client, headers, *ops, op("hazard.explode", {}))[:len(ops)]
    with monkeypatch.context() as m:
        if path == "op by op":
            m.setattr(service, "_write_run", lambda ctx, plan: None)
        if path == "planned ahead":
            m.setattr(service, "PLAN_AHEAD_MIN_OPS", 1)
        return push(client, headers, *ops)


def _push_in_turn(client, headers, path, monkeypatch, together: bool, *ops) -> list[dict]:
    """The ops' results: in one batch, or the last op in a batch of its own after the others."""
    if together:
        return _push(client, headers, path, monkeypatch, *ops)
    return _push(client, headers, path, monkeypatch, *ops[:-1]) + _push(client, headers, path, monkeypatch, ops[-1])


def _codes(results: list[dict]) -> list[tuple]:
    return [(r["status"], (r["error"] or {}).get("code"), (r["error"] or {}).get("field")) for r in results]


def _inspection(place_id: str, *hazards: dict) -> dict:
    return {"id": uid(), "place_id": place_id, "started_at": (NOW - timedelta(hours=1)).isoformat(),
            "checklist": [], "hazards": list(hazards)}


def _stored(session, hazard_id: str) -> Hazard | None:
    return session.exec(select(Hazard).where(Hazard.id == hazard_id).execution_options(populate_existing=True)).first()


def _other_place(session, units) -> Place:
    """Another premises in the same worker's grid."""
    return place_of(session, units, "grid-a-1-1", "nine_small")


@pytest.mark.parametrize("path", PATHS)
def test_a_report_naming_an_inspection_of_another_premises_is_rejected_alone(clocked_client, worker, place, session,
                                                                             units, path, monkeypatch):
    """The hazard of one premises was stored as found in the inspection of another: every phone that pulls
    it shows it under that inspection, and the audit trail says so, for good."""
    inspection = _inspection(place.id)
    [r] = push(clocked_client, worker, op("inspection.submit", inspection))
    assert r["status"] == "applied", r
    elsewhere = _other_place(session, units)
    bad = hazard_data(elsewhere.id, NOW, inspection_id=inspection["id"])
    good = hazard_data(elsewhere.id, NOW, category="lpg_misuse")
    results = _push(clocked_client, worker, path, monkeypatch, op("hazard.report", bad), op("hazard.report", good))
    assert _codes(results) == [("rejected", "inspection_mismatch", "data.inspection_id"), ("applied", None, None)]
    assert "premises" in results[0]["error"]["message"] and inspection["id"] in results[0]["error"]["message"]
    assert _stored(session, bad["id"]) is None and _stored(session, good["id"]) is not None


@pytest.mark.parametrize("path", PATHS)
def test_a_report_cannot_name_an_inspection_of_another_town(clocked_client, worker, place, session, units, path,
                                                           monkeypatch):
    """Town B's worker names town A's inspection: rejected, and the answer names no premises of town A."""
    inspection = _inspection(place.id)
    [r] = push(clocked_client, worker, op("inspection.submit", inspection))
    assert r["status"] == "applied", r
    theirs = place_of(session, units, "grid-b-1-1", "rental")
    bad = hazard_data(theirs.id, NOW, inspection_id=inspection["id"])
    results = _push(clocked_client, login(clocked_client, "worker-b1", device="phone-b"), path, monkeypatch,
                    op("hazard.report", bad))
    assert _codes(results) == [("rejected", "inspection_mismatch", "data.inspection_id")]
    assert place.id not in results[0]["error"]["message"]
    assert _stored(session, bad["id"]) is None


@pytest.mark.parametrize("path", PATHS)
def test_an_inspection_earlier_in_the_batch_counts(clocked_client, worker, place, session, units, path, monkeypatch):
    """In bulk the batch's own inspections are not written yet when its reports are checked: a report
    naming one of another premises must be refused there too, as op by op."""
    inspection = _inspection(place.id)
    bad = hazard_data(_other_place(session, units).id, NOW, inspection_id=inspection["id"])
    same = hazard_data(place.id, NOW, category="lpg_misuse", inspection_id=inspection["id"])
    results = _push(clocked_client, worker, path, monkeypatch, op("inspection.submit", inspection),
                    op("hazard.report", bad), op("hazard.report", same))
    assert _codes(results) == [("applied", None, None), ("rejected", "inspection_mismatch", "data.inspection_id"),
                               ("applied", None, None)]
    assert _stored(session, bad["id"]) is None
    assert _stored(session, same["id"]).inspection_id == inspection["id"]


@pytest.mark.parametrize("path", PATHS)
def test_a_report_of_the_inspections_own_premises_keeps_its_link(clocked_client, worker, place, session, path,
                                                                 monkeypatch):
    inspection = _inspection(place.id)
    [r] = push(clocked_client, worker, op("inspection.submit", inspection))
    assert r["status"] == "applied", r
    later = hazard_data(place.id, NOW, inspection_id=inspection["id"])
    assert _codes(_push(clocked_client, worker, path, monkeypatch, op("hazard.report", later))) == [
        ("applied", None, None)]
    assert _stored(session, later["id"]).inspection_id == inspection["id"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("together", [True, False], ids=["one batch", "two batches"])
def test_reports_sent_before_their_inspection_are_accepted_and_so_is_the_inspection(
        clocked_client, worker, place, session, path, together, monkeypatch):
    """A hazard found during an inspection still under way is sent first: its inspection is not on the
    server yet. Both are kept, and the link with them."""
    inspection = _inspection(place.id)
    early = hazard_data(place.id, NOW, inspection_id=inspection["id"])
    ops = [op("hazard.report", early), op("inspection.submit", inspection)]
    results = _push_in_turn(clocked_client, worker, path, monkeypatch, together, *ops)
    assert _codes(results) == [("applied", None, None)] * 2
    assert _stored(session, early["id"]).inspection_id == inspection["id"]
    assert session.get(Inspection, inspection["id"]) is not None


@pytest.mark.parametrize("path", PATHS)
def test_an_inspection_named_before_by_a_report_of_another_premises_is_kept(clocked_client, worker, place, session,
                                                                            units, path, monkeypatch):
    """The inspection is never lost for a link a report made to it before it arrived."""
    inspection = _inspection(place.id)
    early = hazard_data(_other_place(session, units).id, NOW, inspection_id=inspection["id"])
    results = _push(clocked_client, worker, path, monkeypatch, op("hazard.report", early),
                    op("inspection.submit", inspection))
    assert _codes(results) == [("applied", None, None)] * 2
    assert session.get(Inspection, inspection["id"]) is not None and _stored(session, early["id"]) is not None


def test_a_re_sent_report_gets_its_first_answer_even_if_its_inspection_is_now_of_another_premises(
        clocked_client, worker, place, session, units):
    """Accepted while its inspection was not on the server, the report is re-sent after an inspection of
    another premises took that id: the op_id decides, as for every re-sent op."""
    inspection = _inspection(place.id)
    early = op("hazard.report", hazard_data(_other_place(session, units).id, NOW, inspection_id=inspection["id"]))
    [first] = push(clocked_client, worker, early)
    assert first["status"] == "applied", first
    push(clocked_client, worker, op("inspection.submit", inspection))
    [again] = push(clocked_client, worker, early)
    assert again == {**first, "status": "duplicate"}
