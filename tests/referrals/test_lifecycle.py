"""The referral lifecycle (pure; no DB, no FastAPI): every (status, action) pair,
then the rules of each action."""

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from app.referrals.calendar import WorkCalendar
from app.referrals.lifecycle import (
    ALLOWED,
    Action,
    ActionParams,
    AlreadyListed,
    Effect,
    EffectKind,
    EvidenceRequired,
    HazardState,
    InvalidParameter,
    LifecycleError,
    MissingParameter,
    NoPreviousHolder,
    Status,
    TransitionError,
    apply,
    clocks,
    overdue_clocks,
)
from app.referrals.policy import load_policy

POLICY = load_policy()  # ack 1 working day, re-inspection 3 working days
CAL = WorkCalendar()


def utc(y, m, d, hh=0, mm=0):
    return datetime(y, m, d, hh, mm, tzinfo=UTC)


NOW = utc(2024, 3, 7, 2)  # Thursday 2024-03-07 10:00 in Shanghai
FRESH_ACK = utc(2024, 3, 8, 16)  # end of Friday 3-8
PAST_ACK = utc(2024, 3, 6, 16)  # end of Wednesday 3-6: already overdue at NOW
DEADLINE = utc(2024, 3, 20, 16)  # end of Wednesday 3-20
REINSPECT_AFTER_DEADLINE = utc(2024, 3, 25, 16)  # Thu 3-21, Fri 3-22, Mon 3-25
REINSPECT_FROM_NOW = utc(2024, 3, 12, 16)  # Fri 3-8, Mon 3-11, Tue 3-12
OLD_RECTIFY_DUE = utc(2024, 3, 5, 16)  # already past at NOW
OLD_REINSPECT_DUE = utc(2024, 3, 8, 16)

# -- the transition table, written out independently of the code ----------------

S, A = Status, Action
EXPECTED_ALLOWED = {
    "referred": {"accept", "escalate", "transfer", "return", "dismiss", "merge"},
    "accepted": {
        "order_rectification", "escalate", "transfer", "return", "dismiss",
        "record_reinspection", "close", "merge",
    },
    "rectifying": {"escalate", "transfer", "owner_reported_fixed", "record_reinspection", "close"},
    "reinspection_due": {"record_reinspection", "escalate", "transfer", "close"},
    "closed": {"reopen"},
    "dismissed": {"reopen"},
    "merged": set(),
}  # fmt: skip

# The status each action leads to with the valid parameters below.
EXPECTED_RESULT = {
    "accept": "accepted",
    "order_rectification": "rectifying",
    "escalate": "referred",
    "transfer": "referred",
    "return": "referred",
    "dismiss": "dismissed",
    "record_reinspection": "closed",  # rectified with a photo
    "close": "closed",
    "reopen": "referred",
    "merge": "merged",
    "owner_reported_fixed": "reinspection_due",
}

VALID_PARAMS = {
    "accept": ActionParams(),
    "order_rectification": ActionParams(deadline=DEADLINE),
    "escalate": ActionParams(to_unit_id="U-PS", reason="ack overdue"),
    "transfer": ActionParams(to_unit_id="U-TOWN-C", reason="the place is in town C"),
    "return": ActionParams(reason="not our premises"),
    "dismiss": ActionParams(reason="duplicate photo, no hazard", town_office_signoff=True),
    "record_reinspection": ActionParams(rectified=True, photos=2, note="bikes moved out"),
    "close": ActionParams(override_reason="premises demolished"),
    "reopen": ActionParams(reason="bikes back in the stairwell"),
    "merge": ActionParams(merge_into_id="H-2"),
    "owner_reported_fixed": ActionParams(),
}


def state_in(status: Status, **overrides) -> HazardState:
    """A typical hazard in ``status`` held by town office A, transferred from town office B."""
    clocks_by_status = {
        S.REFERRED: (None, None),
        S.ACCEPTED: (None, None),
        S.RECTIFYING: (OLD_RECTIFY_DUE, OLD_REINSPECT_DUE),
        S.REINSPECTION_DUE: (OLD_RECTIFY_DUE, OLD_REINSPECT_DUE),
        S.CLOSED: (OLD_RECTIFY_DUE, OLD_REINSPECT_DUE),
        S.DISMISSED: (None, None),
        S.MERGED: (None, None),
    }
    rectify_due, reinspect_due = clocks_by_status[status]
    base = HazardState(
        status=status,
        tier="town_office",
        holder_unit_id="U-TOWN-A",
        previous_holder_unit_id="U-TOWN-B",
        previous_tier="town_office",
        ack_due=PAST_ACK,
        rectify_due=rectify_due,
        reinspect_due=reinspect_due,
        listed_supervision=False,
        has_rectified_evidence=status is S.CLOSED,
    )
    return replace(base, **overrides)


def run(state, action, params=None, now=NOW):
    return apply(state, action, params if params is not None else VALID_PARAMS[str(action)], now, CAL, POLICY)


def kinds(effects):
    return [e.kind for e in effects]


def find(effects, kind, **match):
    found = [e for e in effects if e.kind == kind and all(e.data.get(k) == v for k, v in match.items())]
    assert found, f"no {kind} {match} in {effects}"
    return found[0]


def test_allowed_table_matches_the_documented_table():
    assert set(ALLOWED) == set(Status)
    assert {str(s): {str(a) for a in acts} for s, acts in ALLOWED.items()} == EXPECTED_ALLOWED
    assert set(VALID_PARAMS) == {str(a) for a in Action}


PAIRS = list(itertools.product(list(Status), list(Action)))


@pytest.mark.parametrize(("status", "action"), PAIRS, ids=[f"{s}-{a}" for s, a in PAIRS])
def test_every_status_action_pair(status, action):
    state = state_in(status)
    allowed = EXPECTED_ALLOWED[str(status)]
    if str(action) in allowed:
        new, effects = run(state, action)
        assert new.status == EXPECTED_RESULT[str(action)]
        assert isinstance(new, HazardState)
        assert effects and all(isinstance(e, Effect) for e in effects)
        assert state == state_in(status)  # input untouched
    else:
        with pytest.raises(TransitionError) as info:
            run(state, action)
        err = info.value
        assert err.status == status
        assert err.action == action
        assert err.allowed == sorted(allowed)
        assert f"'{action}'" in str(err) and f"'{status}'" in str(err)
        for name in allowed:
            assert name in str(err)


def test_transition_error_is_not_a_lifecycle_error():
    # 409 (TransitionError) and 422 (LifecycleError) stay distinguishable.
    assert not issubclass(TransitionError, LifecycleError)
    with pytest.raises(TransitionError) as info:
        run(state_in(S.MERGED), A.REOPEN)
    assert info.value.allowed == []
    assert "allowed: none" in str(info.value)


def test_action_may_be_given_as_string():
    new, _ = apply(state_in(S.REFERRED), "accept", ActionParams(), NOW, CAL, POLICY)
    assert new.status is S.ACCEPTED


def test_unknown_action():
    with pytest.raises(InvalidParameter, match="unknown action"):
        apply(state_in(S.REFERRED), "approve", ActionParams(), NOW, CAL, POLICY)


def test_naive_now_rejected():
    with pytest.raises(InvalidParameter, match="now"):
        run(state_in(S.REFERRED), A.ACCEPT, now=datetime(2024, 3, 7, 10))


# -- accept -------------------------------------------------------------------------


@pytest.mark.parametrize(("ack_due", "late"), [(PAST_ACK, True), (FRESH_ACK, False)])
def test_accept_satisfies_the_ack_clock(ack_due, late):
    new, effects = run(state_in(S.REFERRED, ack_due=ack_due), A.ACCEPT)
    assert new.status is S.ACCEPTED
    # the written rectification order (责令限期改正通知书) is due 3 working days after accepting
    assert clocks(new) == {"order": CAL.add_workdays(NOW, POLICY.order_workdays)}
    assert find(effects, EffectKind.CLOCK_STARTED, clock="order")
    assert find(effects, EffectKind.ACCEPTED).data["late"] is late
    assert find(effects, EffectKind.CLOCK_SATISFIED, clock="ack").data["late"] is late


# -- order_rectification --------------------------------------------------------------


def test_order_rectification_sets_deadline_and_reinspection_clock():
    new, effects = run(state_in(S.ACCEPTED), A.ORDER_RECTIFICATION)
    assert new.status is S.RECTIFYING
    assert new.rectify_due == DEADLINE
    assert new.reinspect_due == REINSPECT_AFTER_DEADLINE
    assert find(effects, EffectKind.RECTIFICATION_ORDERED).data == {
        "deadline": DEADLINE,
        "reinspect_due": REINSPECT_AFTER_DEADLINE,
    }
    assert find(effects, EffectKind.CLOCK_STARTED, clock="rectify").data["due"] == DEADLINE
    assert find(effects, EffectKind.CLOCK_STARTED, clock="reinspect").data["due"] == REINSPECT_AFTER_DEADLINE


@pytest.mark.parametrize(
    ("params", "error", "field"),
    [
        (ActionParams(), MissingParameter, "deadline"),
        (ActionParams(deadline=NOW), InvalidParameter, "deadline"),  # not in the future
        (ActionParams(deadline=utc(2024, 3, 1)), InvalidParameter, "deadline"),
        (ActionParams(deadline=datetime(2024, 3, 20)), InvalidParameter, "deadline"),  # naive
    ],
)
def test_order_rectification_parameter_errors(params, error, field):
    with pytest.raises(error) as info:
        run(state_in(S.ACCEPTED), A.ORDER_RECTIFICATION, params)
    assert info.value.field == field
    assert f"'{field}'" in str(info.value)


# -- owner_reported_fixed ---------------------------------------------------------------


def test_owner_reported_fixed_starts_the_reinspection_clock():
    new, effects = run(state_in(S.RECTIFYING), A.OWNER_REPORTED_FIXED)
    assert new.status is S.REINSPECTION_DUE
    assert new.reinspect_due == REINSPECT_FROM_NOW
    assert new.rectify_due == OLD_RECTIFY_DUE  # kept on the record
    assert clocks(new) == {"reinspect": REINSPECT_FROM_NOW}
    assert find(effects, EffectKind.CLOCK_SATISFIED, clock="rectify").data["late"] is True
    assert find(effects, EffectKind.CLOCK_STARTED, clock="reinspect").data["due"] == REINSPECT_FROM_NOW


# -- record_reinspection ---------------------------------------------------------------


@pytest.mark.parametrize("status", [S.ACCEPTED, S.RECTIFYING, S.REINSPECTION_DUE])
def test_reinspection_rectified_with_photo_closes(status):
    new, effects = run(state_in(status), A.RECORD_REINSPECTION, ActionParams(rectified=True, photos=1))
    assert new.status is S.CLOSED
    assert new.has_rectified_evidence is True
    assert find(effects, EffectKind.REINSPECTION_RECORDED).data["rectified"] is True
    assert find(effects, EffectKind.CLOSED).data == {"with_evidence": True, "override_reason": None}


@pytest.mark.parametrize("status", [S.ACCEPTED, S.RECTIFYING, S.REINSPECTION_DUE])
def test_reinspection_rectified_without_photo_stays_and_flags(status):
    state = state_in(status)
    new, effects = run(state, A.RECORD_REINSPECTION, ActionParams(rectified=True, photos=0))
    assert new == state
    assert kinds(effects) == [EffectKind.REINSPECTION_RECORDED, EffectKind.EVIDENCE_MISSING]


@pytest.mark.parametrize("status", [S.ACCEPTED, S.RECTIFYING, S.REINSPECTION_DUE])
def test_reinspection_not_rectified_with_new_deadline(status):
    new, effects = run(state_in(status), A.RECORD_REINSPECTION, ActionParams(rectified=False, deadline=DEADLINE))
    assert new.status is S.RECTIFYING
    assert (new.rectify_due, new.reinspect_due) == (DEADLINE, REINSPECT_AFTER_DEADLINE)
    assert find(effects, EffectKind.RECTIFICATION_ORDERED).data["deadline"] == DEADLINE


@pytest.mark.parametrize("status", [S.RECTIFYING, S.REINSPECTION_DUE])
def test_reinspection_not_rectified_keeps_the_old_deadline(status):
    new, effects = run(state_in(status), A.RECORD_REINSPECTION, ActionParams(rectified=False))
    assert new.status is S.RECTIFYING
    assert new.rectify_due == OLD_RECTIFY_DUE  # still overdue: the sweeper will see it
    assert overdue_clocks(new, NOW) == ["rectify"]
    assert EffectKind.RECTIFICATION_ORDERED not in kinds(effects)


@pytest.mark.parametrize(
    ("status", "params", "field"),
    [
        (S.ACCEPTED, ActionParams(rectified=False), "deadline"),  # no deadline to keep
        (S.RECTIFYING, ActionParams(), "rectified"),
        (S.REINSPECTION_DUE, ActionParams(photos=3), "rectified"),
    ],
)
def test_reinspection_missing_parameters(status, params, field):
    with pytest.raises(MissingParameter) as info:
        run(state_in(status), A.RECORD_REINSPECTION, params)
    assert info.value.field == field
    assert f"'{field}'" in str(info.value)


def test_reinspection_negative_photos():
    with pytest.raises(InvalidParameter, match="photos"):
        run(state_in(S.RECTIFYING), A.RECORD_REINSPECTION, ActionParams(rectified=True, photos=-1))


# -- close ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [S.ACCEPTED, S.RECTIFYING, S.REINSPECTION_DUE])
@pytest.mark.parametrize("override", [None, "", "   "])
def test_close_without_evidence_or_reason_is_refused(status, override):
    with pytest.raises(EvidenceRequired) as info:
        run(state_in(status), A.CLOSE, ActionParams(override_reason=override))
    assert isinstance(info.value, LifecycleError)
    assert "override_reason" in str(info.value)


def test_close_with_evidence():
    state = state_in(S.REINSPECTION_DUE, has_rectified_evidence=True)
    new, effects = run(state, A.CLOSE, ActionParams())
    assert new.status is S.CLOSED
    assert find(effects, EffectKind.CLOSED).data == {"with_evidence": True, "override_reason": None}
    assert find(effects, EffectKind.CLOCK_SATISFIED, clock="reinspect")


def test_close_with_override_reason():
    new, effects = run(state_in(S.RECTIFYING), A.CLOSE, ActionParams(override_reason=" premises demolished "))
    assert new.status is S.CLOSED
    assert find(effects, EffectKind.CLOSED).data == {"with_evidence": False, "override_reason": "premises demolished"}


# -- escalate -------------------------------------------------------------------------


def test_escalation_up_the_chain_to_listed_supervision():
    state = state_in(S.RECTIFYING)
    assert overdue_clocks(state, NOW) == ["rectify"]

    s1, e1 = run(state, A.ESCALATE, ActionParams(to_unit_id="U-PS"))
    assert (s1.status, s1.tier, s1.holder_unit_id) == (S.REFERRED, "police_station", "U-PS")
    assert (s1.previous_holder_unit_id, s1.previous_tier) == ("U-TOWN-A", "town_office")
    assert (s1.ack_due, s1.rectify_due, s1.reinspect_due) == (FRESH_ACK, None, None)
    esc = find(e1, EffectKind.ESCALATED)
    assert esc.data["from_tier"] == "town_office" and esc.data["to_tier"] == "police_station"
    assert esc.data["overdue_clocks"] == ["rectify"]
    assert find(e1, EffectKind.REFERRAL_HOP, via="escalate", to_unit_id="U-PS")
    assert find(e1, EffectKind.CLOCK_STOPPED, clock="rectify").data["overdue"] is True
    assert find(e1, EffectKind.CLOCK_STOPPED, clock="reinspect")
    assert find(e1, EffectKind.CLOCK_STARTED, clock="ack").data["due"] == FRESH_ACK

    s2, e2 = run(s1, A.ESCALATE, ActionParams(to_unit_id="U-BRIG"), now=utc(2024, 3, 11, 2))
    assert (s2.status, s2.tier, s2.holder_unit_id) == (S.REFERRED, "brigade", "U-BRIG")
    assert find(e2, EffectKind.ESCALATED).data["overdue_clocks"] == ["ack"]
    assert s2.listed_supervision is False

    # Past the brigade: county listed supervision (挂牌督办); the brigade keeps it.
    s3, e3 = run(s2, A.ESCALATE, ActionParams(), now=utc(2024, 3, 13, 2))
    assert s3.listed_supervision is True
    assert (s3.status, s3.tier, s3.holder_unit_id, s3.ack_due) == (s2.status, s2.tier, s2.holder_unit_id, s2.ack_due)
    assert find(e3, EffectKind.COUNTY_LISTED_SUPERVISION).data["unit_id"] == "U-BRIG"

    # Nothing above listed supervision: a repeated (e.g. sweeper) escalation is refused.
    with pytest.raises(AlreadyListed):
        run(s3, A.ESCALATE, ActionParams(), now=utc(2024, 3, 14, 2))


def test_manual_escalation_reports_no_overdue_clock():
    state = state_in(S.REFERRED, ack_due=FRESH_ACK)
    _, effects = run(state, A.ESCALATE, ActionParams(to_unit_id="U-PS", reason="beyond the town"))
    assert find(effects, EffectKind.ESCALATED).data["overdue_clocks"] == []
    assert find(effects, EffectKind.ESCALATED).data["reason"] == "beyond the town"


@pytest.mark.parametrize(
    ("params", "error", "field"),
    [
        (ActionParams(), MissingParameter, "to_unit_id"),
        (ActionParams(to_unit_id="  "), MissingParameter, "to_unit_id"),
        (ActionParams(to_unit_id="U-TOWN-A"), InvalidParameter, "to_unit_id"),
    ],
)
def test_escalate_parameter_errors(params, error, field):
    with pytest.raises(error) as info:
        run(state_in(S.ACCEPTED), A.ESCALATE, params)
    assert info.value.field == field


# -- transfer / return ----------------------------------------------------------------


@pytest.mark.parametrize("status", [S.ACCEPTED, S.RECTIFYING, S.REINSPECTION_DUE])
def test_transfer_restarts_every_clock(status):
    new, effects = run(state_in(status), A.TRANSFER)
    assert (new.status, new.tier, new.holder_unit_id) == (S.REFERRED, "town_office", "U-TOWN-C")
    assert new.previous_holder_unit_id == "U-TOWN-A"
    assert (new.ack_due, new.rectify_due, new.reinspect_due) == (FRESH_ACK, None, None)
    assert clocks(new) == {"ack": FRESH_ACK}
    assert find(effects, EffectKind.REFERRAL_HOP, via="transfer", to_unit_id="U-TOWN-C")
    assert find(effects, EffectKind.CLOCK_STARTED, clock="ack")


def test_transfer_of_a_moved_premises_hazard_may_name_the_tier_the_policy_wants_there():
    new, effects = run(state_in(S.ACCEPTED), A.TRANSFER,
                       ActionParams(reason="premises moved", to_unit_id="U-PS", to_tier="police_station"))
    assert (new.status, new.tier, new.holder_unit_id) == (S.REFERRED, "police_station", "U-PS")
    assert (new.previous_holder_unit_id, new.previous_tier) == ("U-TOWN-A", "town_office")
    assert find(effects, EffectKind.REFERRAL_HOP, via="transfer", from_tier="town_office", to_tier="police_station")


@pytest.mark.parametrize(
    ("params", "error", "field"),
    [
        (ActionParams(to_unit_id="U-TOWN-C"), MissingParameter, "reason"),
        (ActionParams(reason="wrong town"), MissingParameter, "to_unit_id"),
        (ActionParams(reason="wrong town", to_unit_id="U-TOWN-A"), InvalidParameter, "to_unit_id"),
        (ActionParams(reason="moved", to_unit_id="U-PS", to_tier="county"), InvalidParameter, "to_tier"),
    ],
)
def test_transfer_parameter_errors(params, error, field):
    with pytest.raises(error) as info:
        run(state_in(S.REFERRED), A.TRANSFER, params)
    assert info.value.field == field


def test_return_goes_back_to_the_previous_holder_and_tier_and_never_closes():
    state = state_in(
        S.ACCEPTED,
        tier="police_station",
        holder_unit_id="U-PS",
        previous_holder_unit_id="U-TOWN-A",
        previous_tier="town_office",
    )
    new, effects = run(state, A.RETURN)
    assert (new.status, new.tier, new.holder_unit_id) == (S.REFERRED, "town_office", "U-TOWN-A")
    assert (new.previous_holder_unit_id, new.previous_tier) == ("U-PS", "police_station")
    assert new.ack_due == FRESH_ACK
    hop = find(effects, EffectKind.REFERRAL_HOP, via="return")
    assert hop.data["reason"] == "not our premises"


def test_return_uses_to_tier_when_previous_tier_unknown():
    state = state_in(S.REFERRED, previous_tier=None, tier="brigade", holder_unit_id="U-BRIG")
    new, _ = run(state, A.RETURN, ActionParams(reason="general hazard", to_tier="police_station"))
    assert (new.tier, new.holder_unit_id) == ("police_station", "U-TOWN-B")


@pytest.mark.parametrize(
    ("overrides", "params", "error", "field"),
    [
        ({}, ActionParams(), MissingParameter, "reason"),
        ({"previous_tier": None}, ActionParams(reason="x"), MissingParameter, "to_tier"),
        ({"previous_tier": None}, ActionParams(reason="x", to_tier="county"), InvalidParameter, "to_tier"),
    ],
)
def test_return_parameter_errors(overrides, params, error, field):
    with pytest.raises(error) as info:
        run(state_in(S.REFERRED, **overrides), A.RETURN, params)
    assert info.value.field == field


def test_return_without_previous_holder():
    with pytest.raises(NoPreviousHolder, match="no previous holder"):
        run(state_in(S.REFERRED, previous_holder_unit_id=None), A.RETURN)


# -- dismiss / reopen / merge -----------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (ActionParams(town_office_signoff=True), "reason"),
        (ActionParams(reason="no hazard"), "town_office_signoff"),
        (ActionParams(reason="no hazard", town_office_signoff=False), "town_office_signoff"),
    ],
)
def test_dismiss_needs_reason_and_town_office_signoff(params, field):
    with pytest.raises(MissingParameter) as info:
        run(state_in(S.REFERRED), A.DISMISS, params)
    assert info.value.field == field


def test_dismiss():
    new, effects = run(state_in(S.REFERRED), A.DISMISS)
    assert new.status is S.DISMISSED
    assert find(effects, EffectKind.DISMISSED).data["reason"] == "duplicate photo, no hazard"
    assert find(effects, EffectKind.CLOCK_STOPPED, clock="ack")


@pytest.mark.parametrize("status", [S.CLOSED, S.DISMISSED])
def test_reopen_returns_to_the_current_holder_with_a_fresh_ack_clock(status):
    new, effects = run(state_in(status), A.REOPEN)
    assert (new.status, new.holder_unit_id, new.tier) == (S.REFERRED, "U-TOWN-A", "town_office")
    assert (new.ack_due, new.rectify_due, new.reinspect_due) == (FRESH_ACK, None, None)
    assert new.has_rectified_evidence is False
    assert find(effects, EffectKind.REOPENED).data["holder_unit_id"] == "U-TOWN-A"
    assert find(effects, EffectKind.CLOCK_STARTED, clock="ack")


def test_reopen_needs_a_reason():
    with pytest.raises(MissingParameter) as info:
        run(state_in(S.CLOSED), A.REOPEN, ActionParams())
    assert info.value.field == "reason"


@pytest.mark.parametrize("status", [S.REFERRED, S.ACCEPTED])
def test_merge(status):
    new, effects = run(state_in(status), A.MERGE)
    assert new.status is S.MERGED
    assert find(effects, EffectKind.MERGED).data["into_id"] == "H-2"
    with pytest.raises(MissingParameter) as info:
        run(state_in(status), A.MERGE, ActionParams())
    assert info.value.field == "merge_into_id"


# -- clocks helper --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (S.REFERRED, {"ack": PAST_ACK}),
        (S.ACCEPTED, {}),
        (S.RECTIFYING, {"rectify": OLD_RECTIFY_DUE, "reinspect": OLD_REINSPECT_DUE}),
        (S.REINSPECTION_DUE, {"reinspect": OLD_REINSPECT_DUE}),
        (S.CLOSED, {}),
        (S.DISMISSED, {}),
        (S.MERGED, {}),
    ],
)
def test_clocks_by_status(status, expected):
    assert clocks(state_in(status)) == expected


def test_overdue_clocks():
    state = state_in(S.RECTIFYING)
    assert overdue_clocks(state, utc(2024, 3, 5, 15)) == []
    assert overdue_clocks(state, OLD_RECTIFY_DUE) == ["rectify"]  # due instant counts as overdue
    assert overdue_clocks(state, NOW) == ["rectify"]
    assert overdue_clocks(state, utc(2024, 3, 9)) == ["rectify", "reinspect"]


def test_order_rectification_satisfies_the_order_clock():
    accepted, _ = run(state_in(S.REFERRED, ack_due=FRESH_ACK), A.ACCEPT)
    deadline = NOW + timedelta(days=10)
    new, effects = run(accepted, A.ORDER_RECTIFICATION, ActionParams(deadline=deadline))
    assert "order" not in clocks(new)
    assert find(effects, EffectKind.CLOCK_SATISFIED, clock="order").data["late"] is False
