"""A hazard that names an inspection not on the server yet, and that inspection arriving at another
premises, pushed at the same time by two phones; and what the pushing phone is told when one of its own
hazards loses the link.

The outcome of two pushes must be that of one after the other: the hazard first (it is kept, and loses
the link when the inspection arrives: ``inspection_unlinked``), or the inspection first (the report is
refused, ``inspection_mismatch``, as any report naming an inspection of another premises). Never a hazard
left naming an inspection of another premises; never a record lost or stored twice. On PostgreSQL the
two pushes run side by side (READ COMMITTED: neither sees the other's uncommitted row): each holds an
advisory lock on the inspection id and checks again once it has it. A push planned on a read
transaction before its write one (the HTTP endpoint, on SQLite too) checks again what it planned.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from app.audit.models import HazardEvent
from app.auth.models import Device, User
from app.auth.scope import scope_for
from app.db import Database
from app.demo import seed_demo
from app.hazards.models import Hazard
from app.inspections.models import Inspection
from app.org.models import OrgUnit
from app.referrals.policy import load_policy
from app.referrals.service import Rules, load_calendar
from app.sync import router as sync_router
from app.sync import service as sync
from app.sync.feed import ORIGIN_KEY
from app.sync.schemas import Op
from tests.conftest import fresh_migrated_engine, login
from tests.helpers import hazard_data, op, place_of, push, race_behind_lock, uid
from tests.sync.test_pull import pull_all
from tests.sync.test_push import NOW, place, worker  # noqa: F401  (place, worker: fixtures)
from tests.sync.test_push_inspection_link import (PATHS, _codes, _inspection, _other_place, _push,
                                                  _push_in_turn, _stored)

# hazards whose inspection is of another premises: must never be any
_CROSS_LINKED = (sa.select(Hazard.id).join(Inspection, Inspection.id == Hazard.inspection_id)
                 .where(Hazard.place_id != Inspection.place_id))


def _kinds(session, hazard_id: str) -> list[str]:
    return session.exec(select(HazardEvent.kind).where(HazardEvent.hazard_id == hazard_id)
                        .order_by(HazardEvent.seq)).all()


# -- two phones at once, on a real PostgreSQL ---------------------------------------------------------


class Phone:
    def __init__(self, user: User, device: Device, scope, place_id: str):
        self.user, self.device, self.scope, self.place_id = user, device, scope, place_id


class Pg:
    """A fresh, migrated, seeded schema; phone A (worker-a1) reports at P1, phone B (worker-a2, another
    grid) inspects P2."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.db = Database(engine)
        with Session(engine, expire_on_commit=False) as s:
            seed_demo(s, with_hazards=False)
            s.commit()
            self.rules = Rules(policy=load_policy(), calendar=load_calendar(s))
            units = {u.code: u for u in s.exec(select(OrgUnit)).all()}
            places = {"a": place_of(s, units, "grid-a-1-1", "rental").id,
                      "b": place_of(s, units, "grid-a-2-1", "rental").id}
            self.phones: dict[str, Phone] = {}
            for name, username in (("a", "worker-a1"), ("b", "worker-a2")):
                user = s.exec(select(User).where(User.username == username)).one()
                device = Device(id=uid(), user_id=user.id, device_key=f"race-phone-{name}")
                s.add(device)
                s.flush()
                self.phones[name] = Phone(user, device, scope_for(s, user), places[name])
            s.commit()

    def session(self) -> Session:
        s = Session(self.engine, expire_on_commit=False)
        s.execute(sa.text("SET lock_timeout = '20s'"))  # never hang the suite: an ungranted lock is an error
        return s

    def ctx(self, session: Session, phone: Phone) -> sync.PushContext:
        return sync.PushContext(session=session, rules=self.rules, scope=phone.scope, user=phone.user,
                                device=phone.device, now=NOW)

    def ops(self) -> tuple[str, str, Op, Op]:
        """(hazard id, inspection id, A's hazard.report at P1 naming the inspection, B's inspection.submit at P2)"""
        inspection = _inspection(self.phones["b"].place_id)
        hazard = hazard_data(self.phones["a"].place_id, NOW - timedelta(minutes=1), photos=[],
                             inspection_id=inspection["id"])
        return (hazard["id"], inspection["id"], Op.model_validate(op("hazard.report", hazard)),
                Op.model_validate(op("inspection.submit", inspection)))

    def check(self, hazard_id: str, inspection_id: str, hazard_result, inspection_result) -> str:
        """The outcome is that of one push after the other; returns which came first (or "cross-linked":
        the hazard names the inspection of another premises, as no order of the two would leave it)."""
        assert inspection_result.status == "applied", inspection_result
        with Session(self.engine) as s:
            if s.execute(_CROSS_LINKED.where(Hazard.id == hazard_id)).first() is not None:
                return "cross-linked"
            assert [i.place_id for i in s.exec(select(Inspection).where(Inspection.id == inspection_id))] == \
                [self.phones["b"].place_id]
            stored = s.exec(select(Hazard).where(Hazard.id == hazard_id)).all()
            if hazard_result.status == "rejected":  # the inspection was first
                assert hazard_result.error.code == "inspection_mismatch", hazard_result
                assert stored == []
                return "inspection first"
            assert hazard_result.status == "applied", hazard_result
            [h] = stored
            assert (h.place_id, h.inspection_id, h.version) == (self.phones["a"].place_id, None, 2)
            assert _kinds(s, hazard_id)[-1] == "inspection_unlinked"
            return "hazard first"


@pytest.fixture(scope="module")
def pg(tmp_path_factory) -> Iterator[Pg]:
    with fresh_migrated_engine("postgresql", tmp_path_factory.mktemp("link-race")) as engine:  # skips without it
        yield Pg(engine)


# How a push reaches its ops: planned on a read transaction before the write one (a batch of creations,
# as the HTTP endpoint does), planned on the writer (a run inside a mixed batch), or op by op (the
# fallback when a bulk write is refused; _write_run patched by the test).
def _planned_before(pg: Pg, phone: Phone, ops: list[Op], writer: Session) -> Callable[[], list]:
    with pg.session() as reader:
        ctx = pg.ctx(reader, phone)
        plan = sync.plan_push(ctx, ops)
        reader.commit()
    writer.info[ORIGIN_KEY] = phone.device.id
    return lambda: sync.apply_push(ctx, ops, plan, writer)


def _planned_on_writer(pg: Pg, phone: Phone, ops: list[Op], writer: Session) -> Callable[[], list]:
    writer.info[ORIGIN_KEY] = phone.device.id
    return lambda: sync.apply_push(pg.ctx(writer, phone), ops, None, writer)


WAYS = {"planned before": _planned_before, "planned on the writer": _planned_on_writer,
        "op by op": _planned_on_writer}
ROUNDS = 5  # per way and order: each is forced, so one would do; more show it holds every time


def _race(pg: Pg, held: Session, writer: Session, write: Callable[[], list]) -> list:
    """Run ``write`` on ``writer`` and commit it, in a thread; commit ``held`` once the writer waits for a
    lock or is done. Returns the writer's results; both sessions are closed after."""
    try:
        return race_behind_lock(pg.engine, held, writer, write)
    finally:
        held.close()
        writer.close()


@pytest.mark.parametrize("first", ["hazard", "inspection"])
@pytest.mark.parametrize("way", list(WAYS))
def test_a_push_held_open_and_another_at_once_end_as_one_after_the_other(pg, way, first, monkeypatch):
    """One phone's push is applied and held open (not committed); the other's is applied meanwhile and
    commits once it waits for a lock (or at once, if nothing makes it wait); then the first commits.
    Without the lock both saw nothing of the other, and the hazard kept the link across premises."""
    if way == "op by op":
        monkeypatch.setattr(sync, "_write_run", lambda ctx, plan: None)
    how = WAYS[way]
    seen = Counter()
    for _ in range(ROUNDS):
        hazard_id, inspection_id, report, submit = pg.ops()
        mine = {"hazard": (pg.phones["a"], report), "inspection": (pg.phones["b"], submit)}
        other = "inspection" if first == "hazard" else "hazard"
        (held_phone, held_op), (later_phone, later_op) = mine[first], mine[other]
        held = pg.session()
        [held_result] = how(pg, held_phone, [held_op], held)()  # applied, not committed
        writer = pg.session()
        [later_result] = _race(pg, held, writer, how(pg, later_phone, [later_op], writer))
        results = {first: held_result, other: later_result}
        seen[pg.check(hazard_id, inspection_id, results["hazard"], results["inspection"])] += 1
    assert seen == {f"{first} first": ROUNDS}, seen


STRESS_ROUNDS = 40


@pytest.mark.parametrize("ahead", [True, False], ids=["planned ahead", "planned on the writer"])
def test_two_phones_pushing_at_once_through_the_endpoint(pg, ahead, monkeypatch):
    """The endpoint's own code, one thread per phone, many times. Planned ahead (on a read transaction, then
    written), both plans are made before either writes (a barrier), so each plan misses the other's record;
    planned on the writer (a batch this small, as the endpoint sends it), both write transactions begin
    together."""
    monkeypatch.setattr(sync_router, "_ONE_PUSH_PER_PROCESS", contextlib.nullcontext())  # one per thread here
    barrier = threading.Barrier(2)
    phase = "plan_push" if ahead else "apply_push"
    real = getattr(sync, phase)

    def then_wait(ctx, ops, *rest, **kw):
        if not ahead:
            barrier.wait(30)
        done = real(ctx, ops, *rest, **kw)
        if ahead:
            barrier.wait(30)
        return done

    monkeypatch.setattr(sync, phase, then_wait)
    if ahead:
        monkeypatch.setattr(sync, "PLAN_AHEAD_MIN_OPS", 1)
    pushers = {name: sync_router.Pusher(user=p.user, device=p.device, scope=p.scope, policy=pg.rules.policy)
               for name, p in pg.phones.items()}
    seen = Counter()
    for _ in range(STRESS_ROUNDS):
        hazard_id, inspection_id, report, submit = pg.ops()
        bodies = {"a": report, "b": submit}
        answers: dict[str, dict] = {}
        errors: list[BaseException] = []

        def send(name: str) -> None:
            raw = json.dumps({"ops": [bodies[name].model_dump()]}).encode()
            try:
                answers[name] = json.loads(sync_router._push(pg.db, pushers[name], raw, NOW))
            except BaseException as exc:  # reported below
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=send, args=(name,)) for name in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        [a], [b] = (sync.OpResult.model_validate(r) for r in answers["a"]["results"]), \
            (sync.OpResult.model_validate(r) for r in answers["b"]["results"])
        seen[pg.check(hazard_id, inspection_id, a, b)] += 1
    assert seen["cross-linked"] == 0 and sum(seen.values()) == STRESS_ROUNDS, seen


# -- a plan made before the write transaction, and a record committed in between (both backends) -------


def _rules(client) -> Rules:
    with client.app.state.db.session() as s:
        return Rules(policy=client.app.state.policy, calendar=load_calendar(s))


def _stale_plan(client, username: str, device_key: str, ops: list[dict]) -> Callable[[], list]:
    """Plan ``ops`` as the endpoint does, on a read transaction; the returned call writes them later."""
    db = client.app.state.db
    with db.session() as reader:
        user = reader.exec(select(User).where(User.username == username)).one()
        device = reader.exec(select(Device).where(Device.user_id == user.id, Device.device_key == device_key)).one()
        ctx = sync.PushContext(session=reader, rules=_rules(client), scope=scope_for(reader, user), user=user,
                               device=device, now=NOW)
        parsed = [Op.model_validate(o) for o in ops]
        plan = sync.plan_push(ctx, parsed)
        reader.commit()

    def write() -> list:
        with db.session(write=True) as writer:
            writer.info[ORIGIN_KEY] = device.id
            results = sync.apply_push(ctx, parsed, plan, writer)
            writer.commit()
        return [r.model_dump() for r in results]
    return write


def test_an_inspection_planned_before_a_report_naming_it_was_written_takes_the_link(
        clocked_client, worker, place, session, units):
    """Phone B's inspection is planned (no report names it yet), phone A's report naming it from another
    premises is written, then B's inspection: the report loses the link, as if they had come in turn."""
    login(clocked_client, "worker-a2", device="phone-b")
    elsewhere = place_of(session, units, "grid-a-2-1", "rental")
    inspection = _inspection(elsewhere.id)
    write_inspection = _stale_plan(clocked_client, "worker-a2", "phone-b", [op("inspection.submit", inspection)])
    early = hazard_data(place.id, NOW, inspection_id=inspection["id"])
    [r] = push(clocked_client, worker, op("hazard.report", early))
    assert r["status"] == "applied", r
    [r] = write_inspection()
    assert r["status"] == "applied", r
    h = _stored(session, early["id"])
    assert (h.inspection_id, h.version) == (None, 2) and _kinds(session, early["id"])[-1] == "inspection_unlinked"
    assert session.execute(_CROSS_LINKED).scalars().all() == []


def test_a_report_planned_before_its_inspection_was_written_elsewhere_is_refused(
        clocked_client, worker, place, session, units):
    """Phone A's report is planned while the inspection it names is not on the server; phone B's
    inspection of another premises is written; then A's report: refused, as if they had come in turn."""
    login(clocked_client, "worker-a1", device="test-device")
    b = login(clocked_client, "worker-a2", device="phone-b")
    elsewhere = place_of(session, units, "grid-a-2-1", "rental")
    inspection = _inspection(elsewhere.id)
    early = hazard_data(place.id, NOW, inspection_id=inspection["id"])
    write_report = _stale_plan(clocked_client, "worker-a1", "test-device", [op("hazard.report", early)])
    [r] = push(clocked_client, b, op("inspection.submit", inspection))
    assert r["status"] == "applied", r
    [r] = write_report()
    assert _codes([r]) == [("rejected", "inspection_mismatch", "data.inspection_id")]
    assert _stored(session, early["id"]) is None
    assert session.execute(_CROSS_LINKED).scalars().all() == []


# -- the pushing phone hears of its own hazards' lost links ------------------------------------------


def _hazard_change(changes: list[dict], hazard_id: str) -> dict:
    [change] = [c for c in changes if c["type"] == "hazard" and c["id"] == hazard_id]
    return change


@pytest.mark.parametrize("path", PATHS)
def test_one_batch_the_inspection_says_which_of_the_phones_hazards_lost_the_link_and_pull_brings_it(
        clocked_client, worker, place, session, units, path, monkeypatch):
    """A batch carries a report naming an inspection and then that inspection, of another premises: the
    server clears the link. The phone's own writes are not echoed by pull, so without a word in the
    answer and the change in the feed it would show the hazard inside that inspection for ever."""
    _, cursor, _ = pull_all(clocked_client, worker)
    inspection = _inspection(place.id)
    elsewhere = hazard_data(_other_place(session, units).id, NOW, inspection_id=inspection["id"])
    here = hazard_data(place.id, NOW, category="lpg_misuse", inspection_id=inspection["id"])
    ops = [op("hazard.report", elsewhere), op("hazard.report", here), op("inspection.submit", inspection)]
    results = _push(clocked_client, worker, path, monkeypatch, *ops)
    assert _codes(results) == [("applied", None, None)] * 3, results
    assert results[2]["result"]["unlinked"] == [elsewhere["id"]]
    assert "unlinked" not in results[0]["result"] and "unlinked" not in results[1]["result"]
    changes, cursor, _ = pull_all(clocked_client, worker, cursor)
    change = _hazard_change(changes, elsewhere["id"])
    assert change["deleted"] is False
    assert (change["data"]["inspection_id"], change["data"]["version"]) == (None, 2)
    # what the phone wrote and the server kept as written is still not echoed
    assert not [c for c in changes if c["id"] in (here["id"], inspection["id"])]
    # a re-sent inspection gets its first answer, and nothing more is news
    [again] = push(clocked_client, worker, ops[2])
    assert again == {**results[2], "status": "duplicate"}
    assert pull_all(clocked_client, worker, cursor)[0] == []


def test_inspections_that_unlink_nothing_say_nothing(clocked_client, worker, place):
    [r] = push(clocked_client, worker, op("inspection.submit", _inspection(place.id, hazard_data(place.id, NOW))))
    assert r["status"] == "applied" and "unlinked" not in r["result"], r


@pytest.mark.parametrize("path", PATHS)
def test_two_batches_the_inspection_says_so_too_and_pull_brings_it(clocked_client, worker, place, session, units,
                                                                   path, monkeypatch):
    inspection = _inspection(place.id)
    elsewhere = hazard_data(_other_place(session, units).id, NOW, inspection_id=inspection["id"])
    [r] = _push(clocked_client, worker, path, monkeypatch, op("hazard.report", elsewhere))
    assert r["status"] == "applied", r
    _, cursor, _ = pull_all(clocked_client, worker)
    [r] = _push(clocked_client, worker, path, monkeypatch, op("inspection.submit", inspection))
    assert r["status"] == "applied" and r["result"]["unlinked"] == [elsewhere["id"]], r
    change = _hazard_change(pull_all(clocked_client, worker, cursor)[0], elsewhere["id"])
    assert (change["data"]["inspection_id"], change["data"]["version"]) == (None, 2)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("together", [True, False], ids=["one batch", "two batches"])
def test_the_inspection_first_then_a_report_naming_it_from_elsewhere_is_refused(
        clocked_client, worker, place, session, units, path, together, monkeypatch):
    """The other order: nothing is unlinked, the report is refused and says why."""
    inspection = _inspection(place.id)
    elsewhere = hazard_data(_other_place(session, units).id, NOW, inspection_id=inspection["id"])
    ops = [op("inspection.submit", inspection), op("hazard.report", elsewhere)]
    results = _push_in_turn(clocked_client, worker, path, monkeypatch, together, *ops)
    assert _codes(results) == [("applied", None, None), ("rejected", "inspection_mismatch", "data.inspection_id")]
    assert "unlinked" not in results[0]["result"]
    assert _stored(session, elsewhere["id"]) is None


def test_another_phone_of_the_same_worker_hears_by_pull_and_the_pusher_by_its_answer(
        clocked_client, worker, place, session, units):
    inspection = _inspection(place.id)
    elsewhere = hazard_data(_other_place(session, units).id, NOW, inspection_id=inspection["id"])
    [r] = push(clocked_client, worker, op("hazard.report", elsewhere))
    assert r["status"] == "applied", r
    _, cursor, _ = pull_all(clocked_client, worker)
    tablet = login(clocked_client, "worker-a1", device="tablet")
    _, tablet_cursor, _ = pull_all(clocked_client, tablet)
    [r] = push(clocked_client, tablet, op("inspection.submit", inspection))
    assert r["status"] == "applied" and r["result"]["unlinked"] == [elsewhere["id"]], r  # the worker's own hazard
    for headers, since in ((worker, cursor), (tablet, tablet_cursor)):
        change = _hazard_change(pull_all(clocked_client, headers, since)[0], elsewhere["id"])
        assert (change["data"]["inspection_id"], change["data"]["version"]) == (None, 2)


def test_another_workers_inspection_unlinks_a_hazard_and_its_reporter_hears_by_pull(
        clocked_client, worker, place, session, units):
    """The answer names only the pusher's own hazards: another worker's report, perhaps of premises the
    pusher may not see, is not theirs to hear of; its reporter's phone gets the change by pull."""
    elsewhere_place = place_of(session, units, "grid-a-2-1", "rental")
    inspection = _inspection(elsewhere_place.id)
    early = hazard_data(place.id, NOW, inspection_id=inspection["id"])
    [r] = push(clocked_client, worker, op("hazard.report", early))
    assert r["status"] == "applied", r
    _, cursor, _ = pull_all(clocked_client, worker)
    other = login(clocked_client, "worker-a2", device="phone-b")
    [r] = push(clocked_client, other, op("inspection.submit", inspection))
    assert r["status"] == "applied" and "unlinked" not in r["result"], r
    change = _hazard_change(pull_all(clocked_client, worker, cursor)[0], early["id"])
    assert (change["data"]["inspection_id"], change["data"]["version"]) == (None, 2)
