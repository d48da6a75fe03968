"""Actions on a hazard through the API: who may act, what the lifecycle refuses, what the chain records."""

from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import login
from tests.helpers import op, place_of, push, report, uid

CN = timezone(timedelta(hours=8))


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=CN)


@pytest.fixture
def hazard(clocked_client, clock, session, units):
    """A general hazard in a rental house of town A, held by office-a."""
    clock.now = at("2026-03-02T09:00")
    place = place_of(session, units, "grid-a-1-1", "rental")
    res = report(clocked_client, login(clocked_client, "worker-a1"), place.id, at("2026-03-02T08:00"))
    assert res["holder_org_unit_id"] == units["office-a"].id
    return res["hazard_id"]


def action(c, hid, who, **body):
    return c.post(f"/api/v1/hazards/{hid}/actions", json=body, headers=login(c, who))


def test_disallowed_action_is_409_listing_allowed(clocked_client, hazard):
    r = action(clocked_client, hazard, "office-a", action="close", override_reason="x")
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "transition_not_allowed"
    assert err["allowed"] == ["accept", "dismiss", "escalate", "merge", "return", "transfer"]
    assert err["status_now"] == "referred"


def test_only_the_holder_acts(clocked_client, hazard):
    c = clocked_client
    assert action(c, hazard, "police-a", action="accept").status_code == 403  # sees it (its town), not the holder
    assert action(c, hazard, "worker-a1", action="accept").status_code == 403
    assert action(c, hazard, "office-b", action="accept").status_code == 404  # other town: does not exist for it
    assert action(c, hazard, "worker-b1", action="accept").status_code == 404
    assert action(c, hazard, "office-a", action="accept").status_code == 200


def test_missing_parameter_is_422_naming_it(clocked_client, hazard):
    c = clocked_client
    action(c, hazard, "office-a", action="accept")
    r = action(c, hazard, "office-a", action="transfer", reason="x")
    assert r.status_code == 422 and r.json()["error"]["field"] == "to_unit_id"
    r = action(c, hazard, "office-a", action="order_rectification", deadline="2026-03-01T10:00:00+08:00")
    assert r.status_code == 422 and "future" in r.json()["error"]["message"]
    r = action(c, hazard, "office-a", action="order_rectification", deadline="2026-03-10T10:00:00")
    assert r.status_code == 422  # a deadline without a time zone is ambiguous


def test_rectification_deadline_defaults_to_the_policy_period(clocked_client, hazard):
    c = clocked_client
    action(c, hazard, "office-a", action="accept")
    r = action(c, hazard, "office-a", action="order_rectification")  # no date: ebike_indoor gets 3 working days
    assert r.status_code == 200
    # Monday 2026-03-02 + 3 working days = end of Thursday 03-05 (China time)
    assert r.json()["clocks"]["rectify"]["due"] == "2026-03-05T16:00:00Z"


def test_close_needs_evidence_or_override(clocked_client, hazard):
    c = clocked_client
    action(c, hazard, "office-a", action="accept")
    r = action(c, hazard, "office-a", action="close")
    assert r.status_code == 422 and r.json()["error"]["code"] == "evidence_required"
    r = action(c, hazard, "office-a", action="record_reinspection", rectified=True)  # no photo
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    r = action(c, hazard, "office-a", action="close", override_reason="业主当场整改，现场确认")
    assert r.status_code == 200 and r.json()["status"] == "closed"
    assert r.json()["timeline"][-1]["data"]["override_reason"] == "业主当场整改，现场确认"


def test_on_the_spot_fix_with_photo_closes(clocked_client, hazard):
    c = clocked_client
    action(c, hazard, "office-a", action="accept")
    r = action(c, hazard, "office-a", action="record_reinspection", rectified=True, photos=["c" * 64])
    assert r.status_code == 200 and r.json()["status"] == "closed" and r.json()["deadline_met"] is True
    assert "c" * 64 in r.json()["photos"]


def test_return_never_closes_and_goes_back(clocked_client, hazard, units):
    c = clocked_client
    r = action(c, hazard, "office-a", action="escalate", reason="涉及消防违法，需派出所处罚")
    assert r.json()["holder_org_unit_id"] == units["police-a"].id
    r = action(c, hazard, "police-a", action="return")
    assert r.status_code == 422 and r.json()["error"]["field"] == "reason"
    r = action(c, hazard, "police-a", action="return", reason="不属于派出所监管范围")
    assert r.status_code == 200
    d = r.json()
    assert d["status"] == "referred" and d["holder_org_unit_id"] == units["office-a"].id and d["tier"] == "town_office"
    assert [h["via"] for h in d["referrals"]] == ["route", "escalate", "return"]
    assert d["referrals"][1]["outcome"] == "returned"


def test_transfer_only_to_same_tier(clocked_client, hazard, units):
    c = clocked_client
    r = action(c, hazard, "office-a", action="transfer", to_unit_id=units["police-a"].id, reason="x")
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_transfer_target"
    r = action(c, hazard, "office-a", action="transfer", to_unit_id=units["office-b"].id, reason="地址属于临江街道")
    assert r.status_code == 200 and r.json()["holder_org_unit_id"] == units["office-b"].id
    # office-b now holds it and sees it although it lies in town A; office-a keeps it (its town)
    assert c.get(f"/api/v1/hazards/{hazard}", headers=login(c, "office-b")).status_code == 200
    queue = c.get("/api/v1/queue", headers=login(c, "office-b")).json()["items"]
    assert hazard in [i["id"] for i in queue]


def test_clocks_restart_when_the_holder_changes(clocked_client, clock, hazard):
    c = clocked_client
    action(c, hazard, "office-a", action="accept")
    clock.now = at("2026-03-03T15:00")
    r = action(c, hazard, "office-a", action="escalate", reason="需要执法")
    assert r.json()["clocks"] == {"ack": {"due": "2026-03-04T16:00:00Z", "overdue": False}}  # from the escalation


def test_dismiss_needs_town_office(clocked_client, hazard, units):
    c = clocked_client
    action(c, hazard, "office-a", action="escalate")
    r = action(c, hazard, "police-a", action="dismiss", reason="不构成隐患")
    assert r.status_code == 403 and r.json()["error"]["code"] == "signoff_required"
    r = action(c, hazard, "office-a", action="dismiss", reason="经核实不构成火灾隐患")
    assert r.status_code == 200 and r.json()["status"] == "dismissed"
    r = action(c, hazard, "office-a", action="reopen", reason="复核发现仍存在")
    assert r.status_code == 200 and r.json()["status"] == "referred"
    assert r.json()["holder_org_unit_id"] == units["police-a"].id


def test_duplicate_candidate_and_merge(clocked_client, clock, session, units):
    c = clocked_client
    clock.now = at("2026-03-02T09:00")
    worker = login(c, "worker-a1")
    place = place_of(session, units, "grid-a-1-1", "rental")
    first = report(c, worker, place.id, at("2026-03-02T08:00"), category="window_bars", photos=["1" * 64])
    second = report(c, worker, place.id, at("2026-03-02T08:30"), category="window_bars", photos=["2" * 64])
    other = report(c, worker, place.id, at("2026-03-02T08:40"), category="lpg_misuse")
    assert second["duplicate_of_id"] == first["hazard_id"] and other["duplicate_of_id"] is None
    r = action(c, second["hazard_id"], "office-a", action="merge", merge_into_id=other["hazard_id"])
    assert r.status_code == 200  # any open hazard on the same premises may be the original
    original = c.get(f"/api/v1/hazards/{other['hazard_id']}", headers=login(c, "office-a")).json()
    assert "2" * 64 in original["photos"] and original["timeline"][-1]["kind"] == "merged_in"
    # a late re-inspection of the merged one lands on the original
    [res] = push(c, worker, op("hazard.reinspect", {"id": uid(), "hazard_id": second["hazard_id"], "rectified": False,
                                                     "note": "仍未整改", "at": "2026-03-02T10:00:00+08:00"}))
    assert res["status"] == "applied" and res["result"]["hazard_id"] == other["hazard_id"]
    bad = action(c, first["hazard_id"], "office-a", action="merge", merge_into_id=first["hazard_id"])
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "merge_into_id"


def test_late_reinspection_after_transfer_is_kept_and_flagged(clocked_client, clock, hazard, units):
    c = clocked_client
    # the worker re-inspected on Monday afternoon offline; meanwhile the office transferred the hazard
    clock.now = at("2026-03-03T09:00")
    action(c, hazard, "office-a", action="escalate", reason="需派出所处理")
    clock.now = at("2026-03-05T09:00")
    [res] = push(c, login(c, "worker-a1"), op("hazard.reinspect", {
        "id": uid(), "hazard_id": hazard, "rectified": True, "note": "已整改", "at": "2026-03-02T16:00:00+08:00",
        "photos": ["d" * 64]}))
    assert res["status"] == "applied" and res["result"]["outcome"] == "flagged"
    d = c.get(f"/api/v1/hazards/{hazard}", headers=login(c, "police-a")).json()
    assert d["attention"] == 1 and d["status"] == "referred"
    flagged = [e for e in d["timeline"] if e["flagged"]]
    assert len(flagged) == 1 and flagged[0]["device_time"] == "2026-03-02T08:00:00Z"
    assert d["reinspections"][0]["outcome"] == "flagged"
    # its photo evidence counts: the police station accepts and closes on it without an override
    action(c, hazard, "police-a", action="accept")
    r = action(c, hazard, "police-a", action="close")
    assert r.status_code == 200 and r.json()["status"] == "closed" and r.json()["attention"] == 0


def test_major_hazard_goes_to_brigade_with_cc_and_listed(clocked_client, clock, session, units):
    c = clocked_client
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    res = report(c, login(c, "worker-a1"), place.id, at("2026-03-02T08:00"), severity="major",
                 category="insufficient_exits")
    assert res["tier"] == "brigade" and res["rule"] == "major-to-brigade"
    d = c.get(f"/api/v1/hazards/{res['hazard_id']}", headers=login(c, "brigade")).json()
    assert d["listed_supervision"] is True
    assert {units["office-a"].id, units["police-a"].id} <= set(d["cc_org_unit_ids"])
    listed = c.get("/api/v1/supervision", headers=login(c, "brigade")).json()
    assert res["hazard_id"] in [i["id"] for i in listed]
    cc_queue = c.get("/api/v1/queue", params={"cc": "true"}, headers=login(c, "police-a")).json()["items"]
    assert res["hazard_id"] in [i["id"] for i in cc_queue]
    other_town = c.get("/api/v1/supervision", headers=login(c, "office-b")).json()
    assert res["hazard_id"] not in [i["id"] for i in other_town]


def test_violation_routes_by_town_enforcement_power(clocked_client, session, units):
    c = clocked_client
    a = report(c, login(c, "worker-a1"), place_of(session, units, "grid-a-1-1", "rental").id, at("2026-03-02T08:00"),
               violation=True, category="blocked_exit")
    b = report(c, login(c, "worker-b1"), place_of(session, units, "grid-b-1-1", "rental").id, at("2026-03-02T08:00"),
               violation=True, category="blocked_exit")
    assert a["tier"] == "police_station"  # town A has no enforcement power
    assert b["tier"] == "town_office" and b["holder_org_unit_id"] == units["office-b"].id  # town B has it
