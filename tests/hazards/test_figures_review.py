"""A review of the figures (考核) after the rules of tests/referrals/test_domain_review.py: a deadline met by a fix
shown in time. Each test failed on the first version of that rule (referrals.service._fixed_in_time)."""

from tests.conftest import login
from tests.hazards.test_figures_edges import action, at, get
from tests.helpers import place_of, report


def figures(c, who, **params):
    return get(c, who, "/api/v1/figures", **{"from": "2026-03-01T00:00:00+08:00", "to": "2026-04-01T00:00:00+08:00",
                                              **params})


def quarter_ids(c, who, year, quarter):
    return [i["id"] for i in get(c, who, "/api/v1/reports/major-hazards", year=year, quarter=quarter)]


# -- deadline_met / 隐患清零率 -----------------------------------------------------------------


def _owner_reported_fixed_on_time(c, clock, session, units) -> str:
    """A hazard ordered fixed by 03-06 whose owner reported it fixed on 03-03 (the office's)."""
    clock.now = at("2026-03-02T09:00")
    rental = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(c, login(c, "worker-a1"), rental.id, at("2026-03-02T08:00"))["hazard_id"]
    action(c, hid, "office-a", action="accept")
    action(c, hid, "office-a", action="order_rectification", deadline=at("2026-03-06T18:00").isoformat())
    clock.now = at("2026-03-03T10:00")
    action(c, hid, "office-a", action="owner_reported_fixed")
    return hid


def test_an_owners_report_from_before_a_reopening_does_not_make_a_late_fix_on_time(clocked_client, clock, session,
                                                                                    units):
    c = clocked_client
    hid = _owner_reported_fixed_on_time(c, clock, session, units)
    clock.now = at("2026-03-03T11:00")
    action(c, hid, "office-a", action="close", override_reason="业主已整改，电话确认")
    clock.now = at("2026-03-03T12:00")
    action(c, hid, "office-a", action="reopen", reason="复燃：又在楼道充电")
    action(c, hid, "office-a", action="accept")
    action(c, hid, "office-a", action="order_rectification", deadline=at("2026-03-04T18:00").isoformat())
    clock.now = at("2026-03-05T10:00")  # the new deadline has passed; no owner's report in this round
    d = action(c, hid, "office-a", action="record_reinspection", rectified=True, photos=["b" * 64])
    assert d["status"] == "closed"
    assert d["deadline_met"] is False, "fixed a day after the deadline, counted on time by last round's owner report"
    assert figures(c, "office-a")["total"]["cleared_by_deadline_rate"] == 0.0


def test_an_owners_report_to_the_previous_holder_does_not_make_a_late_fix_on_time(clocked_client, clock, session,
                                                                                 units):
    c = clocked_client
    hid = _owner_reported_fixed_on_time(c, clock, session, units)
    clock.now = at("2026-03-03T11:00")
    action(c, hid, "office-a", action="escalate", reason="业主不配合，提请派出所处理")
    action(c, hid, "police-a", action="accept")
    action(c, hid, "police-a", action="order_rectification", deadline=at("2026-03-04T18:00").isoformat())
    clock.now = at("2026-03-05T10:00")
    d = action(c, hid, "police-a", action="record_reinspection", rectified=True, photos=["b" * 64])
    assert d["status"] == "closed"
    assert d["deadline_met"] is False


def test_a_listed_hazard_shown_fixed_by_the_grid_worker_before_the_deadline_is_on_time_when_the_holder_confirms_on_site(
        clocked_client, clock, session, units):
    """The grid worker's photos reached the server before the deadline (reinspection_due, with evidence); the
    brigade, the holder, closes it out after the deadline by its own 复查 with photos instead of a bare close."""
    c = clocked_client
    clock.now = at("2026-03-02T09:00")
    shop = place_of(session, units, "grid-a-1-1", "nine_small")
    hid = report(c, login(c, "worker-a1"), shop.id, at("2026-03-02T08:00"), severity="major",
                 category="insufficient_exits")["hazard_id"]
    action(c, hid, "brigade", action="accept")
    action(c, hid, "brigade", action="order_rectification", deadline=at("2026-03-06T18:00").isoformat())
    clock.now = at("2026-03-05T10:00")
    d = action(c, hid, "worker-a1", action="record_reinspection", rectified=True, photos=["e" * 64])
    assert d["status"] == "reinspection_due"
    clock.now = at("2026-03-09T10:00")  # after the deadline, within the 复查 period the photos started
    d = action(c, hid, "brigade", action="record_reinspection", rectified=True, photos=["f" * 64])
    assert d["status"] == "closed"
    assert d["deadline_met"] is True, "the fix was shown on 03-05, before the 03-06 deadline"
