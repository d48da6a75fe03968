"""Lock orders a second review found still crossing on a real PostgreSQL after "premises before hazards, each in
id order" (each failed before its fix: a deadlock, or a login waiting for a push).
Each test holds one side at a chosen point (a Gate), lets the other block on its row lock, then lets it go."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlmodel import Session, select

from app.places import service as places_service
from app.places.models import Place
from app.referrals.policy import load_policy
from app.referrals.service import Rules, calendar_for_writing
from app.sync import health
from app.sync import service as sync
from app.demo import DEMO_PASSWORD
from tests.helpers import hazard_data, op, uid
from tests.pg_lock_order.conftest import NOW, Gate, ordered_ids, run_threads


def _gate_first(monkeypatch, module, name: str, gate: Gate, when=lambda *a, **kw: True, nth: int = 1) -> None:
    real = getattr(module, name)
    calls = {"n": 0}

    def hooked(*a, **kw):
        if when(*a, **kw):
            calls["n"] += 1
            if calls["n"] == nth:
                gate()
        return real(*a, **kw)

    monkeypatch.setattr(module, name, hooked)


def _copy(p: Place, **edits) -> dict:
    return {"id": p.id, "name": p.name, "address": p.address, "grid_id": p.grid_id, "place_class": p.place_class,
            "lat": p.lat, "lon": p.lon, "owner_name": p.owner_name, "owner_phone": p.owner_phone,
            "base_version": p.version, **edits}


def _two_places(env) -> tuple[Place, Place]:
    with Session(env.engine) as s:
        ps = s.exec(select(Place).where(Place.grid_id == env.units["grid-a-1-1"]).order_by(Place.id)).all()
        assert len(ps) >= 2
        for p in ps[:2]:
            s.expunge(p)
        return ps[0], ps[1]


def test_csv_import_and_a_push_editing_the_same_two_premises(env, monkeypatch, tmp_path):
    """The CSV import (one transaction, firegrid import-places) edits P2 then P1, in the sheet's order;
    a phone's push edits P1 and P2 (place.upsert), which _lock_rows_ahead locks in id order, P1 then P2.
    Expected: one waits for the other, both succeed. Observed: deadlock, one side aborted (the push 503
    busy, or the whole import rolled back)."""
    p1, p2 = _two_places(env)
    sheet = tmp_path / "places.csv"
    grid_code = "grid-a-1-1"
    sheet.write_text("id,name,grid,place_class\n"
                     f"{p2.id},{p2.name}（导入）,{grid_code},{p2.place_class}\n"
                     f"{p1.id},{p1.name}（导入）,{grid_code},{p1.place_class}\n", encoding="utf-8")
    gate = Gate()
    _gate_first(monkeypatch, places_service, "update_place", gate, nth=2,
                when=lambda *a, **kw: threading.current_thread().name == "importer")  # P2 locked, P1 not yet
    answers: dict = {}

    def importer():
        threading.current_thread().name = "importer"
        try:
            with Session(env.engine) as s:
                rules = Rules(policy=load_policy(), calendar=calendar_for_writing(s))
                answers["import"] = places_service.import_places_csv(s, sheet, rules=rules)
                s.commit()
        except Exception as exc:  # reported below
            answers["import"] = exc

    env.h("worker-a1")
    t1, = run_threads(importer)
    assert gate.arrived.wait(20)
    ops = [op("place.upsert", _copy(p1, owner_name="张一")), op("place.upsert", _copy(p2, owner_name="张二"))]
    t2, = run_threads(lambda: answers.__setitem__("push", env.push("worker-a1", ops)))
    assert env.wait_until_blocked(alive=t2.is_alive), "the push did not wait for the import's lock"
    gate.go.set()
    t1.join(30), t2.join(30)
    imp, pushed = answers["import"], answers["push"]
    assert not isinstance(imp, Exception) and not imp.errors and pushed.status_code == 200, (
        repr(imp)[:400], pushed.status_code, pushed.text[:300])
    assert [r["status"] for r in pushed.json()["results"]] == ["applied", "applied"]


def test_a_phones_edit_of_the_premises_then_its_inspection_listing_a_hazard_against_a_desk_action(env, monkeypatch):
    """Phone batch [place.upsert P (owner's name only), inspection.submit at P listing hazard H it reported
    earlier]. _place_upsert reads P FOR UPDATE (not FOR NO KEY UPDATE, as _lock_rows_ahead and update_place
    take it), which blocks every foreign-key check on P; the inspection's _recorded_already then locks H,
    which _lock_rows_ahead did not lock ahead. office-a accepts H meanwhile: H locked, its second UPDATE's
    foreign-key check (FOR KEY SHARE on P) waits on the push's FOR UPDATE. Expected: both succeed.
    Observed: deadlock, one side 503."""
    h = env.report()
    with Session(env.engine) as s:
        p = s.get(Place, env.place_id)
        s.expunge(p)
    gate = Gate()
    _gate_first(monkeypatch, sync, "_inspection_submit", gate)  # the upsert applied: P held FOR UPDATE
    env.h("office-a"), env.h("worker-a1")
    listed = hazard_data(env.place_id, NOW - timedelta(minutes=5), photos=[])
    listed["id"] = h
    inspection = {"id": uid(), "place_id": env.place_id, "started_at": (NOW - timedelta(minutes=10)).isoformat(),
                  "finished_at": (NOW - timedelta(minutes=1)).isoformat(), "hazards": [listed]}
    ops = [op("place.upsert", _copy(p, owner_name="王老板")), op("inspection.submit", inspection)]
    answers: dict = {}
    t1, = run_threads(lambda: answers.__setitem__("push", env.push("worker-a1", ops)))
    assert gate.arrived.wait(20)
    t2, = run_threads(lambda: answers.__setitem__("act", env.act("office-a", h, action="accept")))
    assert env.wait_until_blocked(alive=t2.is_alive), "the desk action did not wait on the push's lock"
    gate.go.set()
    t1.join(30), t2.join(30)
    pushed, act = answers["push"], answers["act"]
    assert (pushed.status_code, act.status_code) == (200, 200), (pushed.status_code, pushed.text[:300],
                                                                 act.status_code, act.text[:300])
    assert [r["status"] for r in pushed.json()["results"]] == ["applied", "applied"]


def test_a_merge_against_a_batch_reinspecting_the_original_then_listing_the_duplicate(env, monkeypatch):
    """D (id < A) names A as its duplicate. Phone batch [re-inspect A, inspection.submit at P listing D,
    reported earlier by that phone]: _lock_rows_ahead locks P, then A; the inspection's _recorded_already
    locks D later, out of id order (hazards listed in an inspection are not locked ahead). office-a merges D
    into A: lock_for_action locks D, then waits on A. Expected: one after the other, both 200. Observed:
    deadlock, one side 503."""
    d_id, a_id = ordered_ids()
    a = env.report(hazard_id=a_id)
    d = env.report(hazard_id=d_id)
    assert env.hazard(d).duplicate_of_id == a
    gate = Gate()
    _gate_first(monkeypatch, sync, "_inspection_submit", gate)  # A re-inspected and locked, D not yet
    env.h("office-a"), env.h("worker-a1")
    listed = hazard_data(env.place_id, NOW - timedelta(minutes=5), photos=[])
    listed["id"] = d
    inspection = {"id": uid(), "place_id": env.place_id, "started_at": (NOW - timedelta(minutes=10)).isoformat(),
                  "finished_at": (NOW - timedelta(minutes=1)).isoformat(), "hazards": [listed]}
    reinspect = op("hazard.reinspect", {"id": uid(), "hazard_id": a, "rectified": False, "note": "复查未整改",
                                        "at": (NOW - timedelta(minutes=2)).isoformat(), "photos": []})
    answers: dict = {}
    t1, = run_threads(lambda: answers.__setitem__("push", env.push("worker-a1", [reinspect, op("inspection.submit", inspection)])))
    assert gate.arrived.wait(20)
    t2, = run_threads(lambda: answers.__setitem__("merge", env.act("office-a", d, action="merge", merge_into_id=a)))
    assert env.wait_until_blocked(alive=t2.is_alive), "the merge did not wait on the push's lock"
    gate.go.set()
    t1.join(30), t2.join(30)
    pushed, merge = answers["push"], answers["merge"]
    assert (pushed.status_code, merge.status_code) == (200, 200), (pushed.status_code, pushed.text[:300],
                                                                   merge.status_code, merge.text[:300])
    assert [r["status"] for r in pushed.json()["results"]] == ["applied", "applied"]
    assert not env.check_invariants()


def test_a_login_does_not_wait_for_the_users_push(env, monkeypatch):
    """worker-a1's phone pushes a report (its hazard's reporter_user_id and its sync_ops row check their
    foreign key: FOR KEY SHARE on worker-a1's users row, held to commit). worker-a1 logs in on a second phone
    meanwhile: issue_token reads the user FOR UPDATE (to order it with a password change), which conflicts
    with FOR KEY SHARE, so the login waits for the whole push (and past lock_timeout, 10 s, it is 503 busy),
    though the push changes nothing the login checks. Expected: the login answers while the push is held.
    FOR NO KEY UPDATE would still order it with a password change."""
    env.h("worker-a1")
    gate = Gate()
    _gate_first(monkeypatch, health, "record_push", gate)  # every op written, not committed
    answers: dict = {}
    data = hazard_data(env.place_id, NOW - timedelta(minutes=5), photos=[])
    t1, = run_threads(lambda: answers.__setitem__("push", env.push("worker-a1", [op("hazard.report", data)])))
    assert gate.arrived.wait(20)
    t2, = run_threads(lambda: answers.__setitem__("login", env.client.post(
        "/api/v1/auth/token", data={"username": "worker-a1", "password": DEMO_PASSWORD, "device_id": "phone-2"})))
    t2.join(4)
    blocked = t2.is_alive()
    gate.go.set()
    t1.join(30), t2.join(30)
    assert answers["push"].status_code == 200
    assert not blocked, "the login waited for the user's push to commit"
    assert answers["login"].status_code == 200, answers["login"].text[:300]


def test_a_reinspection_of_a_duplicate_merged_while_it_waited_against_a_crosswise_merge(env, monkeypatch):
    """A (id < D) and D, D naming A as its duplicate. office-a merges D into A (lock_for_action: A, D) and is
    held there; the phone re-inspects D: _lock_rows_ahead read D unlocked (not merged yet: the merge has not
    committed), so it locks P and D only, and waits on D. The merge commits; the push gets D, and
    follow_merges now locks A, after D: out of id order. office-a2 (a second desk) merges A into D meanwhile,
    the crosswise merge: lock_for_action takes A, then waits on D. Expected: the re-inspection recorded on A
    (200), the crosswise merge refused with a 4xx (D is merged). Observed: deadlock, one side 503."""
    a_id, d_id = ordered_ids()
    a = env.report(hazard_id=a_id)
    d = env.report(hazard_id=d_id)
    assert env.hazard(d).duplicate_of_id == a
    from app.hazards import service as hazards_service

    desk_gate, push_gate = Gate(), Gate()
    _gate_first(monkeypatch, hazards_service, "require_may_act", desk_gate)  # after lock_for_action(A, D)
    _gate_first(monkeypatch, sync, "follow_merges", push_gate)  # D locked, A not yet
    env.h("office-a"), env.h("worker-a1")
    answers: dict = {}
    t1, = run_threads(lambda: answers.__setitem__("merge", env.act("office-a", d, action="merge", merge_into_id=a)))
    assert desk_gate.arrived.wait(20)
    reinspect = op("hazard.reinspect", {"id": uid(), "hazard_id": d, "rectified": False, "note": "复查未整改",
                                        "at": (NOW - timedelta(minutes=2)).isoformat(), "photos": []})
    t2, = run_threads(lambda: answers.__setitem__("push", env.push("worker-a1", [reinspect])))
    assert env.wait_until_blocked(alive=t2.is_alive), "the push did not wait for the merge's lock"
    desk_gate.go.set()
    t1.join(30)
    assert answers["merge"].status_code == 200, answers["merge"].text[:300]
    assert push_gate.arrived.wait(20)
    t3, = run_threads(lambda: answers.__setitem__("cross", env.act("office-a", a, action="merge", merge_into_id=d)))
    assert env.wait_until_blocked(alive=t3.is_alive), "the crosswise merge did not wait on the push's lock"
    push_gate.go.set()
    t2.join(30), t3.join(30)
    pushed, cross = answers["push"], answers["cross"]
    assert pushed.status_code == 200 and 400 <= cross.status_code < 500, (
        pushed.status_code, pushed.text[:300], cross.status_code, cross.text[:300])
    assert pushed.json()["results"][0]["status"] == "applied"
