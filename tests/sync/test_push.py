"""Push: every op applied at most once, each all-or-nothing, bad ones rejected with a clear code."""

from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select

from app.hazards.models import Hazard
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push, report, uid

CN = timezone(timedelta(hours=8))
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=CN)


@pytest.fixture
def worker(clocked_client, clock):
    clock.now = NOW
    return login(clocked_client, "worker-a1")


@pytest.fixture
def place(session, units):
    return place_of(session, units, "grid-a-1-1", "rental")


def test_resent_op_is_duplicate_with_same_result(clocked_client, worker, place, session):
    o = op("hazard.report", hazard_data(place.id, NOW))
    [first] = push(clocked_client, worker, o)
    [again] = push(clocked_client, worker, o)
    [third, fourth] = push(clocked_client, worker, o, o)
    assert first["status"] == "applied"
    assert again["status"] == third["status"] == fourth["status"] == "duplicate"
    assert again["result"] == first["result"] == third["result"]
    assert len(session.exec(select(Hazard).where(Hazard.id == o["data"]["id"])).all()) == 1


@pytest.mark.parametrize("op_type", ["hazard.report", "inspection.submit"])
def test_resent_op_gets_its_first_answer_even_if_its_data_no_longer_validates(clocked_client, worker, place, op_type):
    """The op_id decides: a phone that re-sends an op (an app update changed how it serialises it, say)
    must not see a rejection for what was applied, or it would show the record as failed."""
    data = hazard_data(place.id, NOW)
    if op_type == "inspection.submit":
        data = {"id": uid(), "place_id": place.id, "started_at": "2026-03-02T08:00:00+08:00",
                "finished_at": "2026-03-02T08:30:00+08:00", "checklist": [], "hazards": [data]}
    o = op(op_type, data)
    [first] = push(clocked_client, worker, o)
    assert first["status"] == "applied", first
    broken = {**o, "data": {**o["data"], "place_id": 42}}
    [again, other] = push(clocked_client, worker, broken, op(op_type, broken["data"]))
    assert again == {**first, "status": "duplicate"}
    assert other["status"] == "rejected" and other["error"]["code"] == "validation_error"


@pytest.mark.parametrize("how", ["bulk", "op by op"])
def test_an_op_id_used_again_for_another_record_is_refused_not_lost(clocked_client, worker, place, session, how):
    """A phone that gives a second hazard the op_id of a first (its own bug) was answered ``duplicate`` and
    dropped the second from its outbox: lost without a word. Refused now, naming what the op_id was used for;
    the same record again is still the first one's duplicate."""
    first = op("hazard.report", hazard_data(place.id, NOW))
    other = {**op("hazard.report", hazard_data(place.id, NOW, category="blocked_exit")), "op_id": first["op_id"]}
    upsert = [op("place.upsert", {"id": place.id, "name": place.name, "grid_id": place.grid_id,
                                  "place_class": place.place_class})] if how == "op by op" else []
    [applied] = push(clocked_client, worker, first)
    *_, refused = push(clocked_client, worker, *upsert, other)
    assert (refused["status"], refused["error"]["code"], refused["error"]["field"]) == ("rejected", "op_id_reused",
                                                                                        "op_id"), refused
    assert first["data"]["id"] in refused["error"]["message"]
    assert session.get(Hazard, other["data"]["id"]) is None
    *_, again = push(clocked_client, worker, *upsert, first)
    assert again == {**applied, "status": "duplicate"}


def test_an_op_applied_before_its_record_was_kept_is_answered_as_before(clocked_client, worker, place, session):
    """Ops applied before migration 0017 have no record_id: a re-send under their op_id is their duplicate."""
    from app.sync.models import SyncOp

    first = op("hazard.report", hazard_data(place.id, NOW))
    [applied] = push(clocked_client, worker, first)
    row = session.get(SyncOp, first["op_id"])
    row.record_id = None
    session.add(row)
    session.commit()
    other = {**op("hazard.report", hazard_data(place.id, NOW, category="blocked_exit")), "op_id": first["op_id"]}
    [again] = push(clocked_client, worker, other)
    assert again == {**applied, "status": "duplicate"}


def test_same_op_twice_in_one_batch_applies_once(clocked_client, worker, place, session):
    o = op("hazard.report", hazard_data(place.id, NOW))
    a, b = push(clocked_client, worker, o, o)
    assert (a["status"], b["status"]) == ("applied", "duplicate") and a["result"] == b["result"]


@pytest.mark.parametrize("mutate,code,field", [
    (lambda d: d.update(category="dragons"), "unknown_category", "data.category"),
    (lambda d: d.update(found_at="2026-03-10T09:00:00+08:00"), "time_in_future", "data.found_at"),
    (lambda d: d.update(description="火" * 2001), "validation_error", "data.description"),
    (lambda d: d.update(severity="catastrophic"), "validation_error", "data.severity"),
    (lambda d: d.update(found_at="2026-03-02T08:00:00"), "validation_error", "data.found_at"),  # no offset
    (lambda d: d.update(photos=["not-a-hash"]), "validation_error", "data.photos"),
    (lambda d: d.update(place_id="00000000-0000-0000-0000-000000000000"), "unknown_place", "data.place_id"),
    (lambda d: d.pop("category"), "validation_error", "data.category"),
])
def test_bad_hazard_rejected_rest_of_batch_applies(clocked_client, worker, place, session, mutate, code, field):
    good1, bad, good2 = (hazard_data(place.id, NOW) for _ in range(3))
    mutate(bad)
    results = push(clocked_client, worker, op("hazard.report", good1), op("hazard.report", bad), op("hazard.report", good2))
    assert [r["status"] for r in results] == ["applied", "rejected", "applied"]
    assert results[1]["error"]["code"] == code
    assert results[1]["error"]["field"].startswith(field), results[1]["error"]
    assert results[1]["error"]["message"]
    stored = set(session.exec(select(Hazard.id).where(Hazard.id.in_([good1["id"], bad["id"], good2["id"]]))).all())
    assert stored == {good1["id"], good2["id"]}


def test_place_outside_scope_is_rejected(clocked_client, worker, session, units):
    elsewhere = place_of(session, units, "grid-b-1-1", "rental")
    [r] = push(clocked_client, worker, op("hazard.report", hazard_data(elsewhere.id, NOW)))
    assert r["status"] == "rejected" and r["error"]["code"] == "unknown_place"


def test_coordinates_out_of_range(clocked_client, worker, place):
    [r] = push(clocked_client, worker, op("inspection.submit", {
        "id": uid(), "place_id": place.id, "started_at": NOW.isoformat(), "lat": 95, "lon": 105}))
    assert r["status"] == "rejected" and r["error"]["field"] == "data.lat"


def test_unknown_op_type(clocked_client, worker):
    [r] = push(clocked_client, worker, op("hazard.explode", {}))
    assert r["status"] == "rejected" and r["error"]["code"] == "unknown_op_type"


def test_inspection_is_all_or_nothing(clocked_client, worker, place, session):
    good = hazard_data(place.id, NOW)
    bad = hazard_data(place.id, NOW, category="dragons")
    insp = {"id": uid(), "place_id": place.id, "started_at": NOW.isoformat(), "hazards": [good, bad]}
    [r] = push(clocked_client, worker, op("inspection.submit", insp))
    assert r["status"] == "rejected" and r["error"]["field"] == "data.hazards.1.category"
    assert session.exec(select(Hazard).where(Hazard.id == good["id"])).first() is None  # nothing of it applied
    insp["hazards"] = [good]
    [r] = push(clocked_client, worker, op("inspection.submit", insp))  # fixed and re-sent under a new op id
    assert r["status"] == "applied" and r["result"]["hazards"][0]["hazard_id"] == good["id"]


def test_batch_over_500_is_413(clocked_client, worker, place):
    ops = [op("hazard.report", hazard_data(place.id, NOW)) for _ in range(501)]
    r = clocked_client.post("/api/v1/sync/push", json={"ops": ops}, headers=worker)
    assert r.status_code == 413 and r.json()["error"]["code"] == "batch_too_large"


def test_place_upsert_then_report(clocked_client, worker, units):
    pid = uid()
    [r] = push(clocked_client, worker, op("place.upsert", {
        "id": pid, "name": "新开麻辣烫", "address": "中心路12号", "grid_id": units["grid-a-1-1"].id,
        "place_class": "nine_small", "lat": 29.35, "lon": 105.92}))
    assert r["status"] == "applied"
    [r] = push(clocked_client, worker, op("hazard.report", hazard_data(pid, NOW)))
    assert r["status"] == "applied"
    [r] = push(clocked_client, worker, op("place.upsert", {
        "id": uid(), "name": "别处", "grid_id": units["grid-b-1-1"].id, "place_class": "nine_small"}))
    assert r["status"] == "rejected" and r["error"]["field"] == "grid_id"


def test_device_id_must_match_token(clocked_client, worker, place):
    r = clocked_client.post("/api/v1/sync/push", json={"device_id": "someone-elses-phone", "ops": []}, headers=worker)
    assert r.status_code == 422 and r.json()["error"]["code"] == "device_mismatch"
    r = clocked_client.post("/api/v1/sync/push", json={"device_id": "test-device", "ops": []}, headers=worker)
    assert r.status_code == 200 and r.json()["results"] == []


def test_reinspect_unknown_hazard(clocked_client, worker):
    [r] = push(clocked_client, worker, op("hazard.reinspect", {
        "id": uid(), "hazard_id": uid(), "rectified": True, "at": NOW.isoformat()}))
    assert r["status"] == "rejected" and r["error"]["code"] == "unknown_hazard"


def test_a_report_duplicates_the_earliest_open_hazard_of_its_kind_there(clocked_client, clock, worker, place, session):
    reports = []
    for _ in range(3):
        clock.now += timedelta(minutes=5)
        reports.append(report(clocked_client, worker, place.id, NOW, category="blocked_exit"))
    first, second, third = reports
    other = report(clocked_client, worker, place.id, NOW, category="lpg_misuse")
    assert second["duplicate_of_id"] == third["duplicate_of_id"] == first["hazard_id"]
    assert other["duplicate_of_id"] is None
    closed = session.get(Hazard, first["hazard_id"])
    closed.status = "closed"
    session.commit()
    clock.now += timedelta(minutes=5)
    # in one batch: both point at the earliest still open, not at each other nor at the closed one
    a, b = push(clocked_client, worker, op("hazard.report", hazard_data(place.id, NOW, category="blocked_exit")),
                op("hazard.report", hazard_data(place.id, NOW, category="blocked_exit")))
    assert a["result"]["duplicate_of_id"] == b["result"]["duplicate_of_id"] == second["hazard_id"]



def test_a_worker_process_runs_one_push_at_a_time(tmp_path, monkeypatch):
    """Pushes arriving together in one process plan and write one after the other (the one holding
    the write lock must not share its CPU with another push), and all of them apply. A real SQLite
    file: the requests run on connections of their own, as in a server."""
    import threading
    import time

    from fastapi.testclient import TestClient

    from app import migrate
    from app.config import Settings
    from app.db import Database, make_engine
    from app.demo import seed_demo
    from app.main import create_app
    from app.sync import service
    from tests.conftest import FakeClock

    url = f"sqlite:///{tmp_path / 'gate.db'}"
    migrate.upgrade(url)
    db = Database(make_engine(url))
    inside, most = [0], [0]
    guard = threading.Lock()
    real_plan = service.plan_push

    def counting_plan(ctx, ops):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)  # long enough for the other requests to arrive meanwhile
        try:
            return real_plan(ctx, ops)
        finally:
            with guard:
                inside[0] -= 1

    try:
        with db.session(write=True) as s:
            seed_demo(s, with_hazards=False)
            s.commit()
        settings = Settings(database_url=url, storage_dir=tmp_path / "blobs", secret_key="t" * 40,
                            sweep_interval_seconds=0)
        with TestClient(create_app(settings, db, clock=FakeClock(NOW))) as c:
            worker = login(c, "worker-a1")
            place_id = c.get("/api/v1/places", params={"limit": 1}, headers=worker).json()["items"][0]["id"]
            monkeypatch.setattr(service, "plan_push", counting_plan)
            results: list = []

            def one():  # a batch large enough to be planned ahead of the write transaction
                results.extend(push(c, worker, *(op("hazard.report", hazard_data(place_id, NOW))
                                                 for _ in range(service.PLAN_AHEAD_MIN_OPS))))

            threads = [threading.Thread(target=one) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert [r["status"] for r in results] == ["applied"] * 4 * service.PLAN_AHEAD_MIN_OPS
        assert most[0] == 1
    finally:
        db.engine.dispose()


def test_a_push_takes_two_worker_thread_hops(clocked_client, worker, place, monkeypatch):
    """Who is pushing (token, scope, rules) in one hop, the push itself and its answer in one more. Each
    dependency that runs in a thread of its own costs a hop; on the 2-CPU benchmark machine six of them
    were ~0.8 ms of a one-op push's ~14 ms of CPU (docs/PERFORMANCE.md)."""
    import anyio.to_thread

    hops = []
    real = anyio.to_thread.run_sync

    async def counting(func, *args, **kwargs):
        hops.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    [result] = push(clocked_client, worker, op("hazard.report", hazard_data(place.id, NOW)))
    assert result["status"] == "applied"
    assert len(hops) == 2, hops


@pytest.mark.parametrize("kinds", [["hazard.report"] * 3, ["hazard.report"] * 4, ["hazard.report"] * 3 + ["bad"]],
                         ids=["3 creations", "4 creations", "4 ops, one not a creation"])
def test_only_a_batch_of_creations_large_enough_is_planned_ahead_of_the_write(clocked_client, worker, place, kinds,
                                                                             monkeypatch):
    """A read transaction for the plan, and the check made again on the writer, cost more than planning a
    few ops under the write lock (a one-op push -11 % of its instructions): a batch of fewer than
    PLAN_AHEAD_MIN_OPS creations, or one that is not all creations, is planned on the writer. Either way
    every op gets its answer."""
    from app.sync import service

    assert service.PLAN_AHEAD_MIN_OPS == 4  # the ids below
    planned_ahead = []
    real = service.plan_push
    monkeypatch.setattr(service, "plan_push", lambda ctx, ops: planned_ahead.append(len(ops)) or real(ctx, ops))
    ops = [op("hazard.report", hazard_data(place.id, NOW, category=c)) if kind == "hazard.report"
           else op("hazard.explode", {}) for kind, c in zip(kinds, ("blocked_exit", "window_bars", "lpg_misuse", "ebike_indoor"))]
    results = push(clocked_client, worker, *ops)
    assert [r["status"] for r in results] == ["applied" if k == "hazard.report" else "rejected" for k in kinds]
    assert planned_ahead == ([4] if kinds == ["hazard.report"] * 4 else [])


def test_push_without_a_valid_token_is_401_before_its_body_is_looked_at(client):
    r = client.post("/api/v1/sync/push", json={"ops": "not a list"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    for body in ({"ops": []}, {"ops": "not a list"}):  # a stranger learns nothing about the body's shape
        r = client.post("/api/v1/sync/push", json=body, headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401, r.text
