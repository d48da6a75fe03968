"""Several devices of one worker, retries and pushes in flight (a review's findings; each test failed on the code
before its fix): a re-inspection re-sent while its first send is held up is its duplicate; what a push does
to a hazard it reported itself comes back to the phone; a push whose premises is reclassed while it is in
flight is routed by the new class, planned ahead or not; a device revoked while its push is in flight gets
401 and nothing is written; a phone that pushes, then pulls, has its pull on record."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from app.hazards.models import Hazard, Reinspection
from app.places.models import Place
from app.sync import service as sync
from app.sync.models import SyncOp
from app.sync.schemas import Op
from tests.conftest import fresh_migrated_engine
from tests.helpers import hazard_data, op, uid
from tests.sync.test_push import NOW
from tests.sync.test_push_link_race import WAYS, Pg, _race


@pytest.fixture(scope="module")
def pg(tmp_path_factory) -> Iterator[Pg]:
    with fresh_migrated_engine("postgresql", tmp_path_factory.mktemp("devices-review")) as engine:  # skips without
        yield Pg(engine)


def _committed_hazard(pg: Pg) -> str:
    phone = pg.phones["a"]
    h = hazard_data(phone.place_id, NOW - timedelta(hours=2), photos=[], category="blocked_exit")
    with pg.session() as s:
        [r] = sync.apply_push(pg.ctx(s, phone), [Op.model_validate(op("hazard.report", h))], None, s)
        s.commit()
    assert r.status == "applied", r
    return h["id"]


def _retry_while_first_is_open(pg: Pg, ops: list[Op]):
    """The same batch from the same phone twice, the second sent while the first is still open (the
    response was slow, the phone timed out and re-sent; two server workers): (first answers, second)."""
    phone = pg.phones["a"]
    held = pg.session()
    first = WAYS["planned on the writer"](pg, phone, ops, held)()
    writer = pg.session()
    second = _race(pg, held, writer, WAYS["planned on the writer"](pg, phone, ops, writer))
    return first, second


def test_pg_a_reinspection_resent_while_the_first_send_is_still_open_is_its_duplicate(pg):
    """A re-inspection re-sent by its phone while the first send is still being applied (a retry after a
    time-out, on another server worker) waits for the hazard's row lock, then finds the re-inspection
    stored: answered ``rejected: reinspection_exists`` instead of ``duplicate`` with its first result. The
    phone is told that an applied re-inspection failed."""
    hazard_id = _committed_hazard(pg)
    reinspect = Op.model_validate(op("hazard.reinspect", {"id": uid(), "hazard_id": hazard_id, "rectified": True,
                                                          "note": "已整改", "at": NOW.isoformat(), "photos": []}))
    [first], [second] = _retry_while_first_is_open(pg, [reinspect])
    assert first.status == "applied", first
    with Session(pg.engine) as s:
        assert len(s.exec(select(Reinspection).where(Reinspection.id == reinspect.data["id"])).all()) == 1
        assert s.get(SyncOp, reinspect.op_id) is not None
    assert (second.status, second.error) == ("duplicate", None), second
    assert second.result == first.result


# -- what a phone is sent back of its own push (both backends) ---------------------------------------

from tests.conftest import login  # noqa: E402
from tests.helpers import place_of, push  # noqa: E402
from tests.sync.test_pull import pull_all  # noqa: E402


def _latest(changes, entity_id):
    mine = [ch for ch in changes if ch["id"] == entity_id]
    return mine[-1] if mine else None


@pytest.mark.parametrize("then", ["hazard.reinspect", "inspection.submit"])
def test_a_change_in_the_same_push_as_its_report_brings_the_hazard_back_to_the_phone(client, session, units, then):
    """A worker reports a hazard and records its re-inspection offline (fixed on the spot, 当场整改); both go in
    one push. The re-inspection is what the server decided about the hazard after the report (its outcome,
    attention flag, evidence, clocks, version): news to the phone, as a re-inspection pushed on its own is
    (tests/sync/test_pull_review.py). Here the hazard counts as created by the push, so the change is not
    echoed: the phone keeps the hazard as it reported it, while its other phone gets the real one. Likewise an
    inspection listing a hazard reported earlier in the same push (the link and version the server set).
    Pushed in two pushes, both reach the pusher's pull."""
    phone, other = login(client, "worker-a1", device="phone-1"), login(client, "worker-a1", device="phone-2")
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    _, cursor, _ = pull_all(client, phone)
    _, other_cursor, _ = pull_all(client, other)
    hazard = hazard_data(place.id, NOW - timedelta(hours=1), category="blocked_exit", photos=[])
    if then == "hazard.reinspect":
        later = {"id": uid(), "hazard_id": hazard["id"], "rectified": True, "note": "当场整改", "at": NOW.isoformat(),
                 "photos": ["b" * 64]}
    else:  # the inspection it was found in lists it (the server links them: tests/sync/test_push_listed_hazard.py)
        later = {"id": uid(), "place_id": place.id, "started_at": (NOW - timedelta(hours=2)).isoformat(),
                 "checklist": [], "hazards": [hazard]}
    reported, reinspected = push(client, phone, op("hazard.report", hazard), op(then, later))
    assert reported["status"] == reinspected["status"] == "applied", (reported, reinspected)
    stored = _latest(pull_all(client, other, other_cursor)[0], hazard["id"])
    assert stored is not None and stored["data"]["version"] > 1, stored  # the re-inspection changed it
    mine = _latest(pull_all(client, phone, cursor)[0], hazard["id"])
    assert mine is not None and mine["data"] == stored["data"], mine


# -- a batch planned ahead of its write (4 or more creations) against one planned on the writer ------



def _reclass_now(client, place_id: str, to_class: str) -> None:
    """The town office makes the premises a key unit, committed (as PATCH /places does)."""
    from app.auth.models import User
    from app.auth.scope import scope_for
    from app.places import service as places
    from app.places.models import PlaceUpdate
    from app.audit.service import Actor
    from app.referrals.service import Rules, load_calendar

    with client.app.state.db.session(write=True) as s:
        office = s.exec(select(User).where(User.username == "office-a")).one()
        place = s.get(Place, place_id, populate_existing=True)
        places.update_place(s, scope_for(s, office), place, PlaceUpdate(place_class=to_class),
                            rules=Rules(policy=client.app.state.policy, calendar=load_calendar(s)),
                            actor=Actor(office.id, office.org_unit_id, None), now=NOW)
        s.commit()


@pytest.mark.parametrize("n", [3, 4])
def test_a_push_whose_premises_is_reclassed_while_it_is_in_flight_is_routed_by_the_new_class(
        clocked_client, clock, session, units, monkeypatch, n):
    """The office makes a rental a key unit (一级重点单位: the brigade's) while a phone's push of n reports there
    is in flight, before its write transaction. A batch of 3 is planned on the writer: routed to the
    brigade. A batch of 4 was planned on a read transaction before the reclass, and on the writer
    _changed_since_planned checks again only where each premises is (grid, town, community), not its class:
    its hazards go to the town office, and stay there (the reclass re-routed the hazards it could see, not
    these). The same reports, routed two ways by the size of the batch."""
    from app.sync import router as sync_router

    clock.now = NOW
    phone = login(clocked_client, "worker-a1", device="phone-b")
    place = place_of(session, units, "grid-a-1-1", "rental")
    real_plan, real_check = sync_router._plan_ahead, sync.check_batch_size
    if n >= sync.PLAN_AHEAD_MIN_OPS:  # after the plan, before the write
        monkeypatch.setattr(sync_router, "_plan_ahead", lambda *a: (real_plan(*a), _reclass_now(
            clocked_client, place.id, "key_unit_1"))[0])
    else:  # the same moment for a batch planned on the writer: before the write
        monkeypatch.setattr(sync, "check_batch_size", lambda ops: (real_check(ops), _reclass_now(
            clocked_client, place.id, "key_unit_1"))[0])
    cats = ("blocked_exit", "window_bars", "lpg_misuse", "ebike_indoor")
    results = push(clocked_client, phone, *[op("hazard.report", hazard_data(place.id, NOW, category=c, photos=[]))
                                            for c in cats[:n]])
    assert [x["status"] for x in results] == ["applied"] * n, results
    assert session.get(Place, place.id, populate_existing=True).place_class == "key_unit_1"
    tiers = {x["result"]["tier"] for x in results}
    stored = {(h.tier, h.place_class) for h in session.exec(select(Hazard).where(Hazard.place_id == place.id)
                                                            .execution_options(populate_existing=True))}
    assert tiers == {"brigade"} and stored == {("brigade", "key_unit_1")}, (tiers, stored)


# -- a device revoked while its push is in flight -------------------------------------------------------


def test_a_push_from_a_device_revoked_while_it_was_in_flight_is_refused_and_writes_nothing(
        clocked_client, clock, session, units, monkeypatch):
    """The token is checked once, on a read session before the push queues for its process's push gate and
    the write lock (seconds on a busy server). A town office revoking a lost phone meanwhile is answered
    at once, yet the push then writes the phone's ops and answers 200: records from a revoked device stored
    after its revocation, and its health row stamped with a push. A password change checks its token
    again on the write transaction (auth.service.require_live_token); the push does not."""
    from app.auth import service as auth_service
    from app.auth.models import Device, User

    clock.now = NOW
    phone = login(clocked_client, "worker-a1", device="lost-phone")
    place = place_of(session, units, "grid-a-1-1", "rental")
    real_check = sync.check_batch_size

    def revoke_then_check(ops):
        with clocked_client.app.state.db.session(write=True) as s:
            user = s.exec(select(User).where(User.username == "worker-a1")).one()
            device = s.exec(select(Device).where(Device.user_id == user.id,
                                                 Device.device_key == "lost-phone")).one()
            auth_service.revoke_device(s, device)
            s.commit()
        return real_check(ops)

    monkeypatch.setattr(sync, "check_batch_size", revoke_then_check)
    data = hazard_data(place.id, NOW, photos=[])
    r = clocked_client.post("/api/v1/sync/push", json={"ops": [op("hazard.report", data)]}, headers=phone)
    assert session.get(Hazard, data["id"], populate_existing=True) is None, r.text
    assert r.status_code == 401, r.text


# -- device health --------------------------------------------------------------------------------------


def test_a_phone_that_pushes_then_pulls_has_its_pull_on_record(clocked_client, clock, session, units):
    """A phone syncs by pushing its outbox, then pulling. The push sets ``last_seen_at``, and the pull is
    recorded only when ``last_seen_at`` is a minute old (pull_router.LAST_SEEN_GRAIN, meant to throttle
    pulls): so the pull right after a push is never recorded, and the office's device health shows a phone
    that pulls on every sync as never having pulled (last_pull_at None). The same after a login."""
    from datetime import datetime, timezone

    c = clocked_client
    office = login(c, "office-a", device="desk")
    phone = login(c, "worker-a1", device="syncing-phone")
    place = place_of(session, units, "grid-a-1-1", "rental")
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=5)
    for k in range(3):  # three syncs, ten minutes apart: push, then pull
        clock.now = start + timedelta(minutes=10 * k)
        push(c, phone, op("hazard.report", hazard_data(place.id, clock.now, photos=[], category="lpg_misuse")))
        clock.now += timedelta(seconds=5)
        assert c.get("/api/v1/sync/pull", headers=phone).status_code == 200
    from app.auth.models import Device
    device_id = session.exec(select(Device.id).where(Device.device_key == "syncing-phone")).one()
    [h] = [h for h in c.get("/api/v1/devices/health", headers=office).json() if h["device_id"] == device_id]
    assert h["last_push_at"] is not None, h
    assert h["last_pull_at"] is not None, h
    assert datetime.fromisoformat(h["last_pull_at"]) == clock.now, h
