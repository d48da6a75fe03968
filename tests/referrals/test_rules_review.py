"""A review of the rules of tests/referrals/test_domain_review.py (ack_hours, major_order_workdays, the 复查
"next step" clock, listed hazards closed out by their holder on a worker's photos, dismissal and merge of major
hazards, a deadline met by a fix shown in time): each test failed on their first version."""

from tests.conftest import login
from tests.helpers import op, push, uid
from tests.referrals.test_domain_review import action, at, get, new_hazard, run_sweep, zulu


def new_major(c, clock, session, units, when="2026-03-02T09:00") -> dict:
    hz = new_hazard(c, clock, session, units, when, place_class="crowded", category="insufficient_exits",
                    severity="major")
    assert hz["tier"] == "brigade"
    return hz


def ok(r):
    assert r.status_code == 200, r.text
    return r.json()


def field_reinspect(c, clock, hid, when: str, rectified: bool, photos=(), pushed: str | None = None):
    clock.now = at(pushed or when)
    [res] = push(c, login(c, "worker-a1"), op("hazard.reinspect", {
        "id": uid(), "hazard_id": hid, "rectified": rectified, "note": "复查", "at": at(when).isoformat(),
        "photos": list(photos)}))
    assert res["status"] == "applied", res
    return res["result"]


# -- 3. the 复查 "next step" clock ------------------------------------------------------------------


def test_repeated_not_rectified_reinspections_do_not_postpone_the_holders_next_step(
        clocked_client, clock, session, units):
    """Change 3: after the deadline, a 复查 finding "not rectified" makes the holder's next step (a new order or
    enforcement) due within order_workdays of that 复查. A grid worker who re-visits every other day and again
    finds it not fixed restarts that clock each time: the holder's step is never due and the hazard never
    escalates. Deadline Fri 03-06; 复查 Mon 03-09 (next step due end of Thu 03-12); another visit Wed 03-11
    moves it to end of Mon 03-16; Friday's sweep does not escalate."""
    c = clocked_client
    hz = new_hazard(c, clock, session, units, "2026-03-02T09:00")
    office = login(c, "office-a")
    ok(action(c, hz["id"], office, action="accept"))
    ok(action(c, hz["id"], office, action="order_rectification", deadline="2026-03-06T18:00:00+08:00"))
    field_reinspect(c, clock, hz["id"], "2026-03-09T10:00", rectified=False)
    due_after_first = zulu(get(c, hz["id"], office)["clocks"]["reinspect"]["due"])
    assert due_after_first == at("2026-03-13T00:00")
    field_reinspect(c, clock, hz["id"], "2026-03-11T10:00", rectified=False)
    d = get(c, hz["id"], office)
    assert zulu(d["clocks"]["reinspect"]["due"]) == due_after_first, d["clocks"]
    escalated = run_sweep(session, at("2026-03-13T09:00"))
    assert [e.clocks for e in escalated if e.hazard_id == hz["id"]] == [("reinspect",)], escalated


def test_offline_reinspection_made_before_the_deadline_is_not_the_reinspection_after_it(
        clocked_client, clock, session, units):
    """Change 3 decides "the 复查 after the deadline is this one, done" by the server's time of the push, not by
    when the re-inspection was made. A worker finds the hazard not yet fixed on Fri 03-06 10:00, before the 18:00
    deadline, with no signal, and the phone pushes on Mon 03-09. The 复查 after the deadline (due end of Wed
    03-11) is taken as done and replaced by a 'next step' clock due end of Thu 03-12."""
    c = clocked_client
    hz = new_hazard(c, clock, session, units, "2026-03-02T09:00")
    office = login(c, "office-a")
    ok(action(c, hz["id"], office, action="accept"))
    ok(action(c, hz["id"], office, action="order_rectification", deadline="2026-03-06T18:00:00+08:00"))
    field_reinspect(c, clock, hz["id"], "2026-03-06T10:00", rectified=False, pushed="2026-03-09T09:00")
    d = get(c, hz["id"], office)
    assert zulu(d["clocks"]["reinspect"]["due"]) == at("2026-03-12T00:00"), d["clocks"]


# -- 4/6. listed hazards closed out by the holder on a worker's photos; _fixed_in_time ------------------


def test_listed_hazard_fixed_and_photographed_before_the_deadline_closed_in_the_window_meets_it(
        clocked_client, clock, session, units):
    """Changes 4 and 6 together: a listed hazard's worker photos no longer close it; the brigade closes it out
    within the 复查 period. The fix was photographed on Thu 03-05, before Friday's deadline, and the brigade closes
    out on Mon 03-09, inside the period the photos started: yet deadline_met is false (it counts against the
    town's 隐患清零率), because _fixed_in_time only credits an owner_reported_fixed event."""
    c = clocked_client
    hz = new_major(c, clock, session, units)
    brigade = login(c, "brigade")
    ok(action(c, hz["id"], brigade, action="accept"))
    ok(action(c, hz["id"], brigade, action="order_rectification", deadline="2026-03-06T18:00:00+08:00"))
    res = field_reinspect(c, clock, hz["id"], "2026-03-05T10:00", rectified=True, photos=["d" * 64])
    assert res["status"] == "reinspection_due"
    clock.now = at("2026-03-09T10:00")
    d = ok(action(c, hz["id"], brigade, action="close"))
    assert d["status"] == "closed"
    assert d["deadline_met"] is True, d


def test_owner_report_found_false_is_not_credited_to_a_later_fix(clocked_client, clock, session, units):
    """Change 6 takes the latest owner_reported_fixed event whatever came after it. The owner says fixed on Thu
    03-05; the brigade's own 复查 that day finds it is not; the deadline (Fri 03-06) passes; a worker photographs
    the fix on Thu 03-12 and the brigade closes out on Fri 03-13. deadline_met comes out true: the false report
    of 03-05 is credited as the fix made before the deadline."""
    c = clocked_client
    hz = new_major(c, clock, session, units)
    brigade = login(c, "brigade")
    ok(action(c, hz["id"], brigade, action="accept"))
    ok(action(c, hz["id"], brigade, action="order_rectification", deadline="2026-03-06T18:00:00+08:00"))
    clock.now = at("2026-03-05T09:00")
    ok(action(c, hz["id"], brigade, action="owner_reported_fixed"))
    clock.now = at("2026-03-05T15:00")
    d = ok(action(c, hz["id"], brigade, action="record_reinspection", rectified=False, note="未整改"))
    assert d["status"] == "rectifying"
    field_reinspect(c, clock, hz["id"], "2026-03-12T10:00", rectified=True, photos=["e" * 64])
    clock.now = at("2026-03-13T10:00")
    d = ok(action(c, hz["id"], brigade, action="close"))
    assert d["status"] == "closed"
    assert d["deadline_met"] is False, d


def test_late_reinspection_of_a_listed_hazard_is_not_credited_as_within_its_period(
        clocked_client, clock, session, units):
    """Change 6: on time only if "the 复查 confirming it came within its period". The owner reports the fix on Thu
    03-05 (before Friday's deadline): 复查 due by the end of Tue 03-10. Nobody re-inspects until Wed 03-11; the
    worker's photos restart the reinspect clock (change 4), and _fixed_in_time compares the brigade's close on
    Thu 03-12 with that restarted due: deadline_met is true for a 复查 made after its period."""
    c = clocked_client
    hz = new_major(c, clock, session, units)
    brigade = login(c, "brigade")
    ok(action(c, hz["id"], brigade, action="accept"))
    ok(action(c, hz["id"], brigade, action="order_rectification", deadline="2026-03-06T18:00:00+08:00"))
    clock.now = at("2026-03-05T15:00")
    d = ok(action(c, hz["id"], brigade, action="owner_reported_fixed"))
    assert zulu(d["clocks"]["reinspect"]["due"]) == at("2026-03-11T00:00")
    field_reinspect(c, clock, hz["id"], "2026-03-11T10:00", rectified=True, photos=["f" * 64])
    clock.now = at("2026-03-12T10:00")
    d = ok(action(c, hz["id"], brigade, action="close"))
    assert d["deadline_met"] is False, d


def test_close_on_an_override_after_the_deadline_is_not_a_reinspection_within_its_period(
        clocked_client, clock, session, units):
    """Change 6: "a close after the deadline counts as on time if the owner reported the fix before the deadline
    and the 复查 confirming it came within its period". Here no 复查 ever confirms it: the owner says fixed on
    Thu 03-05, and on Mon 03-09 the town office closes at its desk with an override_reason. deadline_met is true
    on the owner's word alone."""
    c = clocked_client
    hz = new_hazard(c, clock, session, units, "2026-03-02T09:00")
    office = login(c, "office-a")
    ok(action(c, hz["id"], office, action="accept"))
    ok(action(c, hz["id"], office, action="order_rectification", deadline="2026-03-06T18:00:00+08:00"))
    clock.now = at("2026-03-05T15:00")
    ok(action(c, hz["id"], office, action="owner_reported_fixed"))
    clock.now = at("2026-03-09T10:00")
    d = ok(action(c, hz["id"], office, action="close", override_reason="电话回访，业主称已整改"))
    assert d["status"] == "closed"
    assert d["deadline_met"] is False, d


def test_later_not_rectified_finding_withdraws_a_listed_hazards_photo_evidence(
        clocked_client, clock, session, units):
    """Change 4 keeps a worker's photos of a listed hazard as evidence for the holder to close on. A later 复查
    finds it not fixed (blocked again); with no deadline set yet the phone's re-inspection is flagged, and the
    earlier photos still count: the brigade closes out (整改销案) a hazard its latest re-inspection says is there."""
    c = clocked_client
    hz = new_major(c, clock, session, units)
    brigade = login(c, "brigade")
    ok(action(c, hz["id"], brigade, action="accept"))
    assert field_reinspect(c, clock, hz["id"], "2026-03-03T10:00", rectified=True,
                           photos=["a1" * 32])["status"] == "reinspection_due"
    field_reinspect(c, clock, hz["id"], "2026-03-04T10:00", rectified=False)
    clock.now = at("2026-03-05T10:00")
    r = action(c, hz["id"], brigade, action="close")
    assert r.status_code == 422, r.json()


def test_allowed_actions_do_not_offer_close_of_a_listed_hazard_without_evidence(
        clocked_client, clock, session, units):
    """Change 4: a listed hazard closes only on a re-inspection's photos, never on an override_reason. Its
    holder's allowed_actions still offer 'close' before any evidence exists, which can only ever be refused."""
    c = clocked_client
    hz = new_major(c, clock, session, units)
    brigade = login(c, "brigade")
    d = ok(action(c, hz["id"], brigade, action="accept"))
    assert action(c, hz["id"], brigade, action="close", override_reason="x").status_code == 422
    assert "close" not in get(c, hz["id"], brigade)["allowed_actions"], d["allowed_actions"]


# -- 5. dismissal of a major hazard ------------------------------------------------------------------


def test_brigade_dismissal_of_a_major_hazard_does_not_record_a_town_office_signoff(
        clocked_client, clock, session, units):
    """Change 5 lets the holder (the brigade) alone dismiss a major hazard; the town office may not. The router
    still passes town_office_signoff=True for every dismissal, so the record of the brigade's dismissal says the
    town office signed it off, which it did not (and could not)."""
    c = clocked_client
    hz = new_major(c, clock, session, units)
    brigade = login(c, "brigade")
    d = ok(action(c, hz["id"], brigade, action="dismiss", reason="集体研究认定不构成重大火灾隐患"))
    ev = [e for e in d["timeline"] if e["kind"] == "dismiss"][-1]
    assert ev["data"].get("town_office_signoff") is not True, ev["data"]


# -- 1. ack_hours ------------------------------------------------------------------------------------


def test_reopened_blocked_exit_is_checked_within_24_hours(clocked_client, clock, session, units):
    """Change 1: a blocked escape route is checked within 24 hours, holiday or not. The exit, fixed and closed,
    is blocked again and the hazard reopened on Wed 2026-09-30 10:00, the eve of 国庆: the reopened hazard's ack
    is counted in working days only (due end of Thu 10-08), eight days later."""
    c = clocked_client
    hz = new_hazard(c, clock, session, units, "2026-09-28T09:00", category="blocked_exit")
    office = login(c, "office-a")
    ok(action(c, hz["id"], office, action="accept"))
    clock.now = at("2026-09-28T11:00")
    ok(action(c, hz["id"], office, action="record_reinspection", rectified=True, photos=["b2" * 32]))
    clock.now = at("2026-09-30T10:00")
    d = ok(action(c, hz["id"], office, action="reopen", reason="通道再次被堵"))
    assert d["status"] == "referred"
    assert zulu(d["clocks"]["ack"]["due"]) <= at("2026-10-01T10:00"), d["clocks"]


def test_closes_out_is_not_recorded_on_actions_it_has_nothing_to_do_with(clocked_client, clock, session, units):
    """ActionParams.closes_out defaults to True, and _params_public keeps every value but None/False/0/"": every
    action event on every hazard (accept, dismiss, escalate...) now records "closes_out": true in its data, a
    record_reinspection-only switch that was never given."""
    c = clocked_client
    hz = new_hazard(c, clock, session, units, "2026-03-02T09:00")
    d = ok(action(c, hz["id"], login(c, "office-a"), action="accept"))
    ev = [e for e in d["timeline"] if e["kind"] == "accept"][-1]
    assert "closes_out" not in ev["data"], ev["data"]
