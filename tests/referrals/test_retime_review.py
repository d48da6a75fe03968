"""Review: a push that read the calendar before an admin saved overrides must not write clocks counted
with the old calendar (retime_clocks cannot see hazards not yet committed, so they would never move).

The push reads the rules (the calendar) in its `pusher` dependency, plans on a read transaction, and writes
later: an admin's save that commits in between re-times every hazard it sees, but not the ones the push is
about to write. 2099-01-01 is a Thursday in a year the calendar package does not know.
"""

from datetime import timedelta

import pytest

import app.sync.router as sync_router
import app.sync.service as sync_service
from app.referrals.service import load_calendar
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push, uid
from tests.referrals.test_retime import HEADER, at, put, row, utc


@pytest.fixture
def stale_push_calendar(clocked_client, clock, session, monkeypatch):
    """The push's rules read before the admin's save of 2099-01-02 as a holiday commits."""
    clock.now = at("2099-01-01T09:00")
    stale = load_calendar(session)
    put(clocked_client, ("2099-01-02", False))
    monkeypatch.setattr(sync_router, "load_calendar", lambda s: stale)
    return stale


@pytest.mark.parametrize("ahead", [True, False], ids=["planned ahead", "planned on the writer"])
def test_a_bulk_push_planned_before_a_holiday_was_saved_counts_the_holiday(
        clocked_client, session, units, stale_push_calendar, ahead, monkeypatch):
    if ahead:  # a batch this small is planned on the writer unless told otherwise
        monkeypatch.setattr(sync_service, "PLAN_AHEAD_MIN_OPS", 1)
    c = clocked_client
    place = place_of(session, units, "grid-a-1-1", "rental")
    found = at("2099-01-01T08:55")
    standalone = hazard_data(place.id, found)
    listed = hazard_data(place.id, found, category="window_bars")
    inspection = {"id": uid(), "place_id": place.id, "started_at": found.isoformat(), "finished_at": found.isoformat(),
                  "checklist": [], "hazards": [listed]}
    results = push(c, login(c, "worker-a1"), op("hazard.report", standalone), op("inspection.submit", inspection))
    assert [r["status"] for r in results] == ["applied", "applied"], results
    for hid in (standalone["id"], listed["id"]):
        h = row(session, hid)
        # Friday the 2nd is off: the ack clock ends with Monday the 5th, not Friday
        assert h.ack_due == h.escalate_at == utc("2099-01-05T16:00"), hid
    assert results[0]["result"]["ack_due"].startswith("2099-01-05T16:00")


def test_an_op_by_op_push_planned_before_a_holiday_was_saved_counts_the_holiday(
        clocked_client, session, units, stale_push_calendar):
    c = clocked_client
    place = place_of(session, units, "grid-a-1-1", "rental")
    upsert = {"id": place.id, "name": place.name, "address": place.address, "grid_id": place.grid_id,
              "place_class": place.place_class, "lat": 22.9, "lon": 113.7}
    hz = hazard_data(place.id, at("2099-01-01T08:55"))
    results = push(c, login(c, "worker-a1"), op("place.upsert", upsert), op("hazard.report", hz))
    assert [r["status"] for r in results] == ["applied", "applied"], results
    h = row(session, hz["id"])
    assert h.ack_due == h.escalate_at == utc("2099-01-05T16:00")


def test_a_push_whose_calendar_is_current_is_planned_once(clocked_client, clock, session, units):
    c = clocked_client
    clock.now = at("2099-01-01T09:00")
    put(c, ("2099-01-02", False))
    place = place_of(session, units, "grid-a-1-1", "rental")
    hz = hazard_data(place.id, at("2099-01-01T08:55") - timedelta(minutes=1))
    [res] = push(c, login(c, "worker-a1"), op("hazard.report", hz))
    assert res["status"] == "applied"
    assert row(session, hz["id"]).ack_due == utc("2099-01-05T16:00")


# -- PostgreSQL: an action counting with the calendar its request read, while an admin saves ------------------


def test_pg_an_accept_in_flight_while_a_holiday_is_saved_counts_the_holiday(tmp_path):
    """The office accepts a hazard (its order clock counted with the calendar the request read) while the
    admin saves a holiday inside that clock's window. The hazard's committed clocks (an ack clock that
    ends before the holiday) do not make it a candidate of the save's re-timing, which commits first
    unless it waits: the order clock must still end up counted with the holiday."""
    from types import SimpleNamespace

    from app.audit.service import Actor
    from app.hazards.models import Hazard
    from app.referrals.calendar import WorkCalendar
    from app.referrals.deps import get_rules
    from app.referrals.lifecycle import Action, ActionParams
    from app.referrals.service import act, lock_hazard, save_overrides
    from sqlmodel import Session
    from tests.referrals.test_relocation import NOW
    from tests.referrals.test_relocation_races import pg as pg_fixture  # noqa: F401

    gen = pg_fixture.__wrapped__(tmp_path)  # skips without PostgreSQL
    pg = next(gen)
    try:
        hid = pg.report()
        base = load_calendar_of(pg)
        order_due = base.add_workdays(NOW, pg.rules.policy.order_workdays)
        holiday = base.local_date(order_due - timedelta(seconds=1))  # the last day the order clock counts
        with Session(pg.engine) as s:
            assert s.get(Hazard, hid).ack_due < base.end_of_local_day(holiday - timedelta(days=1))
        held = pg.session()
        request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(policy=pg.rules.policy)))
        rules = get_rules(request, held)  # what the action's request reads, before the hazard is locked
        act(held, rules, lock_hazard(held, hid), Action.ACCEPT, ActionParams(), Actor.system(), NOW)
        held.flush()
        writer = pg.session()
        pg.race(held, writer, lambda: save_overrides(writer, [(holiday, False, "假日")], now=NOW))
        expected = WorkCalendar({**base.overrides, holiday: False}).add_workdays(NOW, pg.rules.policy.order_workdays)
        with Session(pg.engine) as s:
            h = s.get(Hazard, hid)
            assert h.order_due == h.escalate_at == expected != order_due
    finally:
        gen.close()


def load_calendar_of(pg):
    from sqlmodel import Session

    with Session(pg.engine) as s:
        return load_calendar(s)


def test_an_override_of_the_first_day_there_is_is_saved_not_a_500(clocked_client, clock, session, units):
    """A date the override table took before re-timing came (day 0001-01-01): the re-timing's bound, the day
    before the first changed one, does not exist; the save still answers, and the clocks it spans move."""
    c = clocked_client
    from tests.referrals.test_retime import new_hazard

    hid = new_hazard(c, clock, session, units, "2099-01-01T09:00")
    r = put(c, ("0001-01-01", False), ("2099-01-02", False))
    assert r.headers[HEADER] == "1"
    assert row(session, hid).ack_due == utc("2099-01-05T16:00")
    assert put(c, ("0001-01-01", True)).headers[HEADER] == "0"
