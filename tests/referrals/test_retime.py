"""Clocks counted in working days follow the working-day overrides an admin enters after they started.

2099 stands for a year the chinese-calendar package does not know (as 2027 is on 2026-12-01): it counts
Monday-Friday until the admin enters its holidays and adjusted workdays (调休). 2099-01-01 is a Thursday.
"""

from datetime import date, datetime, timedelta, timezone

import sqlalchemy as sa
from sqlmodel import select

from app.audit.models import HazardEvent
from app.hazards.models import Hazard
from app.referrals.calendar import ClockBasis, WorkCalendar
from app.referrals.lifecycle import Action, ActionParams, HazardState, Status, apply, retime
from app.referrals.policy import load_policy
from app.referrals.routing import Facts, route
from app.referrals.service import Rules, load_calendar, sweep
from app.sync.feed import Change
from tests.conftest import login
from tests.helpers import place_of, report

CN = timezone(timedelta(hours=8))
UTC = timezone.utc
POLICY = load_policy()
HEADER = "X-Firegrid-Retimed"


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=CN)


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


# -- the pure core -------------------------------------------------------------------------------


def _routed(now: datetime, calendar: WorkCalendar) -> HazardState:
    d = route(Facts(place_class="rental", severity="general", violation=False, category="ebike_indoor",
                    town_enforcement=False, units={"town_office": "office", "police_station": "police",
                                                   "brigade": "brigade"}, now=now), POLICY, calendar)
    return HazardState(status=Status.REFERRED, tier=d.tier, holder_unit_id=d.unit_id, previous_holder_unit_id=None,
                       ack_due=d.ack_due, rectify_due=None, reinspect_due=None, listed_supervision=False,
                       has_rectified_evidence=False, basis={"ack": d.ack_basis})


def test_routing_records_the_basis_of_the_ack_clock_and_a_new_holiday_moves_it_a_working_day_later():
    st = _routed(at("2099-01-01T09:00"), WorkCalendar())
    assert st.ack_due == utc("2099-01-02T16:00")  # end of Friday the 2nd
    assert st.basis["ack"] == ClockBasis(after=date(2099, 1, 1), workdays=1)
    new, moved = retime(st, WorkCalendar({date(2099, 1, 2): False}), [date(2099, 1, 2)])
    assert new.ack_due == utc("2099-01-05T16:00")  # Friday off, the weekend: end of Monday the 5th
    assert [(m.clock, m.old_due, m.new_due, m.days) for m in moved] == [
        ("ack", utc("2099-01-02T16:00"), utc("2099-01-05T16:00"), (date(2099, 1, 2),))]


def test_an_adjusted_workday_moves_a_clock_earlier():
    st = _routed(at("2099-01-02T09:00"), WorkCalendar())
    assert st.ack_due == utc("2099-01-05T16:00")
    new, moved = retime(st, WorkCalendar({date(2099, 1, 3): True}), [date(2099, 1, 3)])  # 调休: Saturday worked
    assert new.ack_due == utc("2099-01-03T16:00") and [m.clock for m in moved] == ["ack"]


def test_an_explicit_deadline_stays_and_the_reinspection_counted_from_it_moves():
    cal = WorkCalendar()
    st, _ = apply(_routed(at("2099-01-01T09:00"), cal), Action.ACCEPT, ActionParams(), at("2099-01-01T10:00"), cal,
                  POLICY)
    st, _ = apply(st, Action.ORDER_RECTIFICATION, ActionParams(deadline=at("2099-01-07T18:00")),
                  at("2099-01-01T11:00"), cal, POLICY)
    assert "rectify" not in st.basis and st.reinspect_due == utc("2099-01-12T16:00")  # Thu 8, Fri 9, Mon 12
    new, moved = retime(st, WorkCalendar({date(2099, 1, 6): False, date(2099, 1, 9): False}),
                        [date(2099, 1, 6), date(2099, 1, 9)])
    assert new.rectify_due == at("2099-01-07T18:00")
    assert new.reinspect_due == utc("2099-01-13T16:00")  # Thu 8, Mon 12, Tue 13
    assert [(m.clock, m.days) for m in moved] == [("reinspect", (date(2099, 1, 9),))]


def test_a_default_deadline_moves_and_the_reinspection_follows_it():
    cal = WorkCalendar()
    st, _ = apply(_routed(at("2099-01-01T09:00"), cal), Action.ACCEPT, ActionParams(), at("2099-01-01T10:00"), cal,
                  POLICY)
    st, _ = apply(st, Action.ORDER_RECTIFICATION, ActionParams(deadline_workdays=3), at("2099-01-01T11:00"), cal,
                  POLICY)
    assert st.rectify_due == utc("2099-01-06T16:00") and st.reinspect_due == utc("2099-01-09T16:00")
    new, moved = retime(st, WorkCalendar({date(2099, 1, 6): False, date(2099, 1, 9): False}),
                        [date(2099, 1, 6), date(2099, 1, 9)])
    assert new.rectify_due == utc("2099-01-07T16:00")  # Fri 2, Mon 5, Wed 7
    assert new.reinspect_due == utc("2099-01-13T16:00")  # from Wed 7: Thu 8, Mon 12, Tue 13
    assert [m.clock for m in moved] == ["rectify", "reinspect"]


def test_only_running_clocks_with_a_basis_move():
    cal, holiday = WorkCalendar(), WorkCalendar({date(2099, 1, 2): False})
    st = _routed(at("2099-01-01T09:00"), cal)
    accepted, _ = apply(st, Action.ACCEPT, ActionParams(), at("2099-01-01T10:00"), cal, POLICY)
    assert accepted.order_due == utc("2099-01-06T16:00")
    new, moved = retime(accepted, holiday, [date(2099, 1, 2)])
    assert new.ack_due == st.ack_due and new.order_due == utc("2099-01-07T16:00")  # ack no longer runs
    assert [m.clock for m in moved] == ["order"]
    closed, _ = apply(accepted, Action.CLOSE, ActionParams(override_reason="fixed at once"), at("2099-01-01T11:00"),
                      cal, POLICY)
    assert retime(closed, holiday, [date(2099, 1, 2)]) == (closed, [])
    legacy = HazardState(**{**st.__dict__, "basis": {}})
    assert retime(legacy, holiday, [date(2099, 1, 2)]) == (legacy, [])


# -- through the service and the API, on both backends ------------------------------------------


def action(c, hid, who, **body):
    r = c.post(f"/api/v1/hazards/{hid}/actions", json=body, headers=login(c, who))
    assert r.status_code == 200, r.text
    return r.json()


def put(c, *days: tuple[str, bool]):
    r = c.put("/api/v1/calendar/overrides", json=[{"day": d, "is_workday": w, "note": "测试"} for d, w in days],
              headers=login(c, "admin"))
    assert r.status_code == 200, r.text
    return r


def new_hazard(c, clock, session, units, when: str, **kw) -> str:
    clock.now = at(when)
    place = place_of(session, units, "grid-a-1-1", "rental")
    return report(c, login(c, "worker-a1"), place.id, at(when) - timedelta(minutes=5), **kw)["hazard_id"]


def row(session, hid: str) -> Hazard:
    session.expire_all()
    return session.get(Hazard, hid)


def events(session, hid: str, kind: str) -> list[HazardEvent]:
    return session.exec(select(HazardEvent).where(HazardEvent.hazard_id == hid, HazardEvent.kind == kind)).all()


def test_a_holiday_entered_after_a_report_moves_its_ack_clock_with_an_event_and_a_feed_change(
        clocked_client, clock, session, units):
    c = clocked_client
    hid = new_hazard(c, clock, session, units, "2099-01-01T09:00")
    assert row(session, hid).ack_due == utc("2099-01-02T16:00")
    seq = session.exec(select(sa.func.max(Change.seq))).one() or 0
    r = put(c, ("2099-01-02", False))
    assert r.headers[HEADER] == "1"
    assert r.json()[0] == {"day": "2099-01-02", "is_workday": False, "note": "测试"}  # the body as ever
    h = row(session, hid)
    assert h.ack_due == h.next_due == h.escalate_at == utc("2099-01-05T16:00")
    [ev] = events(session, hid, "clocks_retimed")
    assert ev.data["clocks"]["ack"]["old_due"].startswith("2099-01-02T16:00")
    assert ev.data["clocks"]["ack"]["new_due"].startswith("2099-01-05T16:00")
    assert ev.data["changed_days"] == [{"day": "2099-01-02", "is_workday": False}]
    assert ev.actor_user_id is not None  # the admin who entered the day
    changes = session.exec(select(Change).where(Change.entity_id == hid, Change.seq > seq)).all()
    assert changes and changes[-1].data["ack_due"] == "2099-01-05T16:00:00Z"
    detail = c.get(f"/api/v1/hazards/{hid}", headers=login(c, "office-a")).json()
    assert detail["clocks"]["ack"]["due"] == "2099-01-05T16:00:00Z"


def test_an_adjusted_workday_entered_after_a_report_moves_its_ack_clock_earlier(clocked_client, clock, session, units):
    c = clocked_client
    hid = new_hazard(c, clock, session, units, "2099-01-02T09:00")
    assert row(session, hid).ack_due == utc("2099-01-05T16:00")
    assert put(c, ("2099-01-03", True)).headers[HEADER] == "1"
    h = row(session, hid)
    assert h.ack_due == h.escalate_at == utc("2099-01-03T16:00")
    assert len(events(session, hid, "clocks_retimed")) == 1


def test_an_explicit_deadline_stays_and_its_reinspection_moves_a_default_deadline_moves(
        clocked_client, clock, session, units):
    c = clocked_client
    explicit = new_hazard(c, clock, session, units, "2099-01-01T09:00", category="window_bars")
    default = new_hazard(c, clock, session, units, "2099-01-01T09:00")
    for hid in (explicit, default):
        action(c, hid, "office-a", action="accept")
    action(c, explicit, "office-a", action="order_rectification", deadline="2099-01-07T18:00:00+08:00")
    action(c, default, "office-a", action="order_rectification")  # ebike_indoor: 3 working days
    assert (row(session, explicit).rectify_due, row(session, explicit).reinspect_due) == (
        utc("2099-01-07T10:00"), utc("2099-01-12T16:00"))
    assert (row(session, default).rectify_due, row(session, default).reinspect_due) == (
        utc("2099-01-06T16:00"), utc("2099-01-09T16:00"))
    assert put(c, ("2099-01-06", False), ("2099-01-09", False)).headers[HEADER] == "2"
    h = row(session, explicit)
    assert h.rectify_due == utc("2099-01-07T10:00") and h.reinspect_due == utc("2099-01-13T16:00")
    assert h.next_due == utc("2099-01-07T10:00") and h.escalate_at == utc("2099-01-13T16:00")
    [ev] = events(session, explicit, "clocks_retimed")
    assert set(ev.data["clocks"]) == {"reinspect"} and ev.data["clocks"]["reinspect"]["days"] == ["2099-01-09"]
    h = row(session, default)
    assert h.rectify_due == utc("2099-01-07T16:00") and h.reinspect_due == utc("2099-01-13T16:00")
    [ev] = events(session, default, "clocks_retimed")
    assert set(ev.data["clocks"]) == {"rectify", "reinspect"}
    detail = c.get(f"/api/v1/hazards/{default}", headers=login(c, "office-a")).json()
    assert detail["clocks"]["rectify"]["due"] == "2099-01-07T16:00:00Z"


def test_a_closed_hazard_and_one_stored_without_a_basis_are_left_alone(clocked_client, clock, session, units):
    c = clocked_client
    closed = new_hazard(c, clock, session, units, "2099-01-01T09:00")
    action(c, closed, "office-a", action="accept")
    action(c, closed, "office-a", action="close", override_reason="当场改正")
    legacy = new_hazard(c, clock, session, units, "2099-01-01T09:00", category="lpg_misuse")
    session.execute(sa.update(Hazard).where(Hazard.id == legacy).values(clock_basis=None))  # stored before bases
    session.commit()
    before = {hid: (row(session, hid).ack_due, row(session, hid).order_due, row(session, hid).version)
              for hid in (closed, legacy)}
    assert put(c, ("2099-01-02", False)).headers[HEADER] == "0"
    for hid in (closed, legacy):
        h = row(session, hid)
        assert (h.ack_due, h.order_due, h.version) == before[hid]
        assert events(session, hid, "clocks_retimed") == []
    assert row(session, legacy).escalate_at == utc("2099-01-02T16:00")  # it keeps its deadline


def test_the_sweep_does_not_escalate_a_retimed_hazard_at_its_old_deadline(clocked_client, clock, session, units):
    c = clocked_client
    hid = new_hazard(c, clock, session, units, "2099-01-01T09:00")
    put(c, ("2099-01-02", False))
    session.expire_all()
    rules = Rules(policy=c.app.state.policy, calendar=load_calendar(session))
    assert sweep(session, rules, utc("2099-01-03T00:00")) == []  # past the old deadline, before the new
    assert row(session, hid).status == "referred"
    [done] = sweep(session, rules, utc("2099-01-05T16:00"))
    assert done.hazard_id == hid and done.clocks == ("ack",)


def test_a_put_that_changes_no_working_day_retimes_nothing(clocked_client, clock, session, units):
    c = clocked_client
    hid = new_hazard(c, clock, session, units, "2099-01-01T09:00")
    assert put(c, ("2099-01-02", True)).headers[HEADER] == "0"  # a workday already (Monday-Friday)
    assert put(c, ("2099-01-02", False)).headers[HEADER] == "1"
    version = row(session, hid).version
    r = c.put("/api/v1/calendar/overrides", json=[{"day": "2099-01-02", "is_workday": False, "note": "元旦"}],
              headers=login(c, "admin"))  # only the note changes
    assert r.status_code == 200 and r.headers[HEADER] == "0"
    h = row(session, hid)
    assert h.version == version and h.ack_due == utc("2099-01-05T16:00")
    assert len(events(session, hid, "clocks_retimed")) == 1


def test_the_first_schedule_of_an_unknown_year_retimes_a_clock_the_law_alone_had_stretched(
        clocked_client, clock, session, units):
    """Before any override of 2099, its statutory days off are guessed (除夕 1-20 to 初三 1-23); the schedule
    then entered lists 1-20 to 1-22 only. Friday 1-23 was not among the days sent, but it is a working day
    now, and the clock that ran across it is counted again."""
    c = clocked_client
    hid = new_hazard(c, clock, session, units, "2099-01-19T10:00")  # Monday
    assert row(session, hid).ack_due == utc("2099-01-26T16:00")  # end of Monday 1-26: 1-20..1-25 off
    r = put(c, ("2099-01-20", False), ("2099-01-21", False), ("2099-01-22", False))
    assert r.headers[HEADER] == "1"
    assert row(session, hid).ack_due == utc("2099-01-23T16:00")  # end of Friday 1-23
    [ev] = events(session, hid, "clocks_retimed")
    assert {"day": "2099-01-23", "is_workday": True} in ev.data["changed_days"]
