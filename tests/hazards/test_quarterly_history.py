"""The quarterly major-hazard list (seed 004: 每季度集中曝光一批重大火灾隐患) of a hazard that was reopened: its row
says only how it ended last, so a hazard closed all quarter and reopened after it was listed in that quarter
(found by the figures review). It is listed in the quarters it was open in at some moment, and only those."""

from tests.conftest import login
from tests.hazards.test_figures_edges import action, at, get
from tests.helpers import place_of, report


def _listed(c, hid, quarter: int, year: int = 2026) -> bool:
    """On the list as the brigade and the town office read it (they must agree)."""
    seen = {hid in [i["id"] for i in get(c, who, "/api/v1/reports/major-hazards", year=year, quarter=quarter)]
            for who in ("brigade", "office-a")}
    assert len(seen) == 1, "the brigade and the town office read different lists"
    return seen.pop()


def _major(c, clock, session, units) -> str:
    clock.now = at("2026-02-02T09:00")
    shop = place_of(session, units, "grid-a-1-1", "nine_small")
    return report(c, login(c, "worker-a1"), shop.id, at("2026-02-02T08:00"), severity="major",
                  category="insufficient_exits")["hazard_id"]


def _close(c, clock, hid, when: str) -> None:
    clock.now = at(when)
    r = action(c, hid, "brigade", action="record_reinspection", rectified=True, photos=["d" * 64])
    assert r["status"] == "closed", r


def test_closed_in_q1_and_reopened_in_q3_is_not_on_the_q2_list(clocked_client, clock, session, units):
    c = clocked_client
    hid = _major(c, clock, session, units)
    clock.now = at("2026-02-03T09:00")
    action(c, hid, "brigade", action="accept")
    _close(c, clock, hid, "2026-02-10T09:00")
    clock.now = at("2026-07-15T09:00")
    action(c, hid, "brigade", action="reopen", reason="复发")
    assert _listed(c, hid, 1) and _listed(c, hid, 3)
    assert not _listed(c, hid, 2)
    action(c, hid, "brigade", action="accept")
    _close(c, clock, hid, "2026-07-16T09:00")  # closed again in Q3: Q2 still out, Q3 still in
    assert _listed(c, hid, 3) and not _listed(c, hid, 2) and not _listed(c, hid, 4)


def test_dismissed_by_its_holder_then_reopened_much_later_is_not_listed_in_between(clocked_client, clock, session,
                                                                                     units):
    c = clocked_client
    hid = _major(c, clock, session, units)
    clock.now = at("2026-02-03T09:00")
    action(c, hid, "brigade", action="dismiss", reason="误报")
    clock.now = at("2026-08-03T09:00")
    action(c, hid, "brigade", action="reopen", reason="复查发现确有隐患")
    assert _listed(c, hid, 1) and _listed(c, hid, 3)
    assert not _listed(c, hid, 2)


def test_reopened_within_the_quarter_it_was_closed_in_stays_on_the_later_lists(clocked_client, clock, session,
                                                                                units):
    c = clocked_client
    hid = _major(c, clock, session, units)
    clock.now = at("2026-02-03T09:00")
    action(c, hid, "brigade", action="accept")
    _close(c, clock, hid, "2026-02-10T09:00")
    clock.now = at("2026-03-20T09:00")
    action(c, hid, "brigade", action="reopen", reason="复发")
    assert _listed(c, hid, 1) and _listed(c, hid, 2) and _listed(c, hid, 4)  # open since
