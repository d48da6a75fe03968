"""Any write to a hazard (a desk action, a phone's re-inspection, the sweep's escalation) locks the hazard
row first and, at its second UPDATE of that row in the transaction (the state, then the audit-chain head),
PostgreSQL's foreign-key check takes FOR KEY SHARE on the hazard's premises. A move or reclass of the premises
(places.service.update_place) takes the premises FOR UPDATE first and the hazards after. So the two lock
(hazard, place) and (place, hazard): when the edit lands between the hazard's lock and its second update, the
pair deadlocks and PostgreSQL aborts one (503 busy; for the sweep, its whole chunk rolls back).
RELIABILITY.md says "an action and a move are serialised by the foreign-key check on the hazard's premises":
that holds only when the action's updates were all flushed before the move began (the existing test)."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlmodel import Session

from app.hazards import service as hazards_service
from app.hazards.models import Hazard
from app.org.models import OrgUnit
from app.places.models import Place
from app.referrals import lifecycle
from app.referrals.policy import load_policy
from app.referrals.sweeper import run_sweep
from app.db import Database
from app.sync import service as sync
from tests.helpers import op, uid

from .conftest import NOW, Gate, run_threads


def _move(env, answers: dict):
    return lambda: answers.__setitem__("move", env.client.patch(
        f"/api/v1/places/{env.place_id}", json={"grid_id": env.units["grid-b-1-1"]}, headers=env.h("admin")))


def _held_where_the_premises_is(env, hazard_id: str) -> None:
    with Session(env.engine) as s:
        h, p = s.get(Hazard, hazard_id), s.get(Place, env.place_id)
        assert h.town_id == p.town_id
        assert s.get(OrgUnit, h.holder_unit_id).town_id in (p.town_id, None) or h.tier == "brigade"


def _gate(monkeypatch, module, name: str, gate: Gate, when=lambda *a, **kw: True) -> None:
    real = getattr(module, name)

    def hooked(*a, **kw):
        if when(*a, **kw) and not gate.arrived.is_set():
            gate()
        return real(*a, **kw)

    monkeypatch.setattr(module, name, hooked)


def _race(env, first, gate: Gate, answers: dict) -> None:
    """``first`` runs to its gate (the hazard locked); the move starts and blocks on the hazard; the gate
    opens."""
    env.h("admin")
    t1, = run_threads(first)
    assert gate.arrived.wait(20), "the hazard writer never reached its gate"
    t2, = run_threads(_move(env, answers))
    assert env.wait_until_blocked(alive=t2.is_alive), "the move did not wait for the hazard's lock"
    gate.go.set()
    t1.join(30), t2.join(30)


def test_a_desk_action_and_a_move_of_its_premises_at_once(env, monkeypatch):
    """office-a accepts H while the admin moves H's premises to town B. Expected: one after the other (accept,
    then H relocated to town B's office; or the move, then the accept refused 403/409). Before the fix: deadlock,
    the move answered 503."""
    h = env.report()
    env.h("office-a")
    gate = Gate()
    _gate(monkeypatch, hazards_service, "require_may_act", gate)  # called right after lock_for_action
    answers: dict = {}
    _race(env, lambda: answers.__setitem__("act", env.act("office-a", h, action="accept")), gate, answers)
    act, move = answers["act"], answers["move"]
    assert act.status_code in (200, 403, 409) and move.status_code == 200, (
        act.status_code, act.text[:300], move.status_code, move.text[:300])
    _held_where_the_premises_is(env, h)
    assert not env.check_invariants()


def test_a_phones_reinspection_and_a_move_of_its_premises_at_once(env, monkeypatch):
    """worker-a1's phone re-inspects H (accepted by the office) as rectified with a photo (one op: it closes
    H) while the admin moves H's premises. Expected: both succeed (H closed, handed over to town B for a
    reopening). Before the fix: deadlock, one answered 503."""
    h = env.report()
    assert env.act("office-a", h, action="accept").status_code == 200  # a re-inspection applies (not flagged)
    env.h("worker-a1")
    gate = Gate()
    _gate(monkeypatch, sync, "record_field_reinspection", gate)  # after follow_merges locked H
    answers: dict = {}
    # rectified, with a photo: the re-inspection closes H (an applied one, not flagged: two UPDATEs of H)
    reinspect = op("hazard.reinspect", {"id": uid(), "hazard_id": h, "rectified": True, "note": "已整改",
                                        "at": (NOW - timedelta(minutes=1)).isoformat(), "photos": ["b" * 64]})
    _race(env, lambda: answers.__setitem__("push", env.push("worker-a1", [reinspect])), gate, answers)
    push, move = answers["push"], answers["move"]
    assert (push.status_code, move.status_code) == (200, 200), (
        push.status_code, push.text[:300], move.status_code, move.text[:300])
    assert push.json()["results"][0]["status"] == "applied"
    _held_where_the_premises_is(env, h)
    assert not env.check_invariants()


def test_the_sweep_escalating_while_a_desk_moves_the_premises(env, monkeypatch):
    """The sweep escalates an overdue H (town office -> police) while the admin moves H's premises to town B.
    Expected: both succeed, H ends with town B's police (or town B's office, then escalated next sweep).
    Before the fix: deadlock; the move is answered 503 or the sweep's chunk rolls back."""
    h = env.report()
    later = NOW + timedelta(days=30)
    gate = Gate()
    _gate(monkeypatch, lifecycle, "overdue_clocks", gate,
          when=lambda *a, **kw: threading.current_thread().name == "sweeper")  # _escalate_due: H locked
    answers: dict = {}

    def sweeper():
        threading.current_thread().name = "sweeper"
        try:
            answers["sweep"] = run_sweep(Database(env.engine), load_policy(), later)
        except Exception as exc:  # reported below
            answers["sweep"] = exc

    _race(env, sweeper, gate, answers)
    sweep, move = answers["sweep"], answers["move"]
    assert not isinstance(sweep, Exception) and move.status_code == 200, (repr(sweep)[:300], move.status_code,
                                                                           move.text[:300])
    assert [e.hazard_id for e in sweep] == [h]
    _held_where_the_premises_is(env, h)
    assert not env.check_invariants()
