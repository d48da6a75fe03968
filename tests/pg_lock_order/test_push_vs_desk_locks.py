"""A phone's batch locks rows in the order of its ops; desks lock them in their own order. Where the two
orders cross, PostgreSQL breaks the deadlock and one side gets 503 ``busy`` (or its op is lost from the
batch answer) though either alone, or one after the other, succeeds. Each test holds the push at a chosen
point with a gate, lets the desk request block on the push's row lock, then lets the push go on."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, select

from app.hazards.models import Hazard, Reinspection
from app.sync import service as sync
from tests.helpers import hazard_data, op, uid

from .conftest import NOW, Gate, ordered_ids, run_threads


def _reinspect(hazard_id: str) -> dict:
    return op("hazard.reinspect", {"id": uid(), "hazard_id": hazard_id, "rectified": False, "note": "复查未整改",
                                   "at": (NOW - timedelta(minutes=1)).isoformat(), "photos": []})


def _gate_nth_call(monkeypatch, module, name: str, n: int, gate: Gate) -> None:
    real = getattr(module, name)
    calls = {"n": 0}

    def hooked(*a, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            gate()
        return real(*a, **kw)

    monkeypatch.setattr(module, name, hooked)


def test_a_move_of_the_premises_while_a_phone_reinspects_there_then_reports_there(env, monkeypatch):
    """Phone batch [re-inspect H at P, report a new hazard at P] (a visit's natural outbox order) while the
    admin moves P to town B. The push locks H (follow_merges, FOR UPDATE), then reads P FOR SHARE when it
    writes the report (_write_run -> _changed_since_planned -> _WHERE_PLACES_LOCKED); the move locks P
    (update_place, FOR UPDATE), then H (_hazards_follow). Expected: one waits for the other, both succeed,
    H and the new hazard held in town B. Before the fix: deadlock, the move answered 503."""
    h = env.report()
    gate = Gate()
    _gate_nth_call(monkeypatch, sync, "_write_run", 1, gate)  # H locked by the re-inspection; P not yet read FOR SHARE
    new = hazard_data(env.place_id, NOW - timedelta(minutes=2), photos=[], category="blocked_exit")
    answers: dict = {}
    admin = env.h("admin")
    env.h("worker-a1")
    push_t, = run_threads(lambda: answers.__setitem__("push", env.push("worker-a1", [_reinspect(h), op("hazard.report", new)])))
    assert gate.arrived.wait(20)
    move_t, = run_threads(lambda: answers.__setitem__("move", env.client.patch(
        f"/api/v1/places/{env.place_id}", json={"grid_id": env.units["grid-b-1-1"]}, headers=admin)))
    assert env.wait_until_blocked(alive=move_t.is_alive), "the move did not wait for the push's lock"
    gate.go.set()
    push_t.join(30), move_t.join(30)
    push, move = answers["push"], answers["move"]
    assert (push.status_code, move.status_code) == (200, 200), (push.status_code, push.text[:300],
                                                                 move.status_code, move.text[:300])
    assert [r["status"] for r in push.json()["results"]] == ["applied", "applied"]
    assert not env.check_invariants()


def test_a_merge_while_a_phone_reinspects_both_hazards_in_the_other_order(env, monkeypatch):
    """Two reports of one thing at one premises (B names A as its duplicate). The phone re-inspects both,
    [A, B] in its outbox, while the office merges them; lock_for_action locks the pair in id order (B < A),
    the push in op order (A, then B). Expected: serialised (the re-inspection of B lands on A once merged, or
    the merge follows it). Before the fix: deadlock, one side 503."""
    b_id, a_id = ordered_ids()
    a = env.report(hazard_id=a_id)
    b = env.report(hazard_id=b_id)
    assert env.hazard(b).duplicate_of_id == a
    gate = Gate()
    _gate_nth_call(monkeypatch, sync, "follow_merges", 2, gate)  # A locked, B not yet
    env.h("office-a")  # logged in before the race
    env.h("worker-a1")
    answers: dict = {}
    push_t, = run_threads(lambda: answers.__setitem__("push", env.push("worker-a1", [_reinspect(a), _reinspect(b)])))
    assert gate.arrived.wait(20)
    merge_t, = run_threads(lambda: answers.__setitem__("merge", env.act("office-a", b, action="merge",
                                                                         merge_into_id=a)))
    assert env.wait_until_blocked(alive=merge_t.is_alive), "the merge did not wait for the push's lock"
    gate.go.set()
    push_t.join(30), merge_t.join(30)
    push, merge = answers["push"], answers["merge"]
    assert (push.status_code, merge.status_code) == (200, 200), (push.status_code, push.text[:300],
                                                                  merge.status_code, merge.text[:300])
    assert [r["status"] for r in push.json()["results"]] == ["applied", "applied"]
    with Session(env.engine) as s:
        assert len(s.exec(select(Reinspection)).all()) == 2
        assert s.get(Hazard, b).status == "merged"
    assert not env.check_invariants()


def test_two_phones_reinspecting_the_same_two_hazards_in_opposite_orders(env, monkeypatch):
    """Two phones (two server workers: the per-process push gate does not serialise them) each re-inspect
    the two hazards of one premises, in the order their outboxes hold them: [A, B] and [B, A]. Each
    re-inspection locks its hazard (follow_merges) and keeps it to commit. Expected: one push waits for the
    other, both applied. Before the fix: deadlock, one phone gets 503."""
    import contextlib

    from app.sync import router as sync_router

    monkeypatch.setattr(sync_router, "_ONE_PUSH_PER_PROCESS", contextlib.nullcontext())  # two processes
    a = env.report()
    b = env.report(category="blocked_exit")
    gate = Gate()
    real = sync._hazard_reinspect
    calls = {"n": 0}

    def hooked(ctx, data):
        if ctx.device.device_key == "phone-1":
            calls["n"] += 1
            if calls["n"] == 2:
                gate()  # phone 1 holds A, B not yet
        return real(ctx, data)

    monkeypatch.setattr(sync, "_hazard_reinspect", hooked)
    env.h("worker-a1", "phone-1"), env.h("worker-a1", "phone-2")
    answers: dict = {}
    t1, = run_threads(lambda: answers.__setitem__(1, env.push("worker-a1", [_reinspect(a), _reinspect(b)], "phone-1")))
    assert gate.arrived.wait(20)
    t2, = run_threads(lambda: answers.__setitem__(2, env.push("worker-a1", [_reinspect(b), _reinspect(a)], "phone-2")))
    assert env.wait_until_blocked(alive=t2.is_alive), "phone 2 did not wait for phone 1's lock"
    gate.go.set()
    t1.join(30), t2.join(30)
    assert (answers[1].status_code, answers[2].status_code) == (200, 200), (
        answers[1].status_code, answers[1].text[:300], answers[2].status_code, answers[2].text[:300])
    with Session(env.engine) as s:
        assert len(s.exec(select(Reinspection)).all()) == 4
    assert not env.check_invariants()
