"""The referral lifecycle: statuses, the ALLOWED table, and apply().

PURE: no database, no web framework. ``apply(state, action, params, now,
calendar, policy)`` returns the new state and the effects the service must
record (referral hops, clocks started/stopped, escalations...). It never
mutates its input.

The closed loop (闭环): found -> referred to a tier -> accepted (报到) ->
rectification ordered with a deadline (限期整改) -> owner fixes -> re-inspected
with photo evidence (复查) -> closed (整改销案).

Errors:
- ``TransitionError`` (-> HTTP 409): the action is not allowed in this status;
  carries ``status``, ``action`` and ``allowed`` (sorted action values).
- ``LifecycleError`` subclasses (-> HTTP 422): the action is allowed but its
  parameters or the state do not permit it (``MissingParameter``,
  ``InvalidParameter``, ``EvidenceRequired``, ``NoPreviousHolder``,
  ``AlreadyListed``). Each has a stable ``code``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from .calendar import ClockBasis, WorkCalendar
from .policy import Policy
from .routing import TIER_ORDER, ack_clock, next_tier

__all__ = [
    "ALLOWED",
    "Action",
    "ActionParams",
    "AlreadyListed",
    "DUE_FIELDS",
    "ClockBasis",
    "Effect",
    "EffectKind",
    "EvidenceRequired",
    "HazardState",
    "InvalidParameter",
    "LifecycleError",
    "MissingParameter",
    "NoPreviousHolder",
    "Retimed",
    "Status",
    "TransitionError",
    "apply",
    "basis_from_json",
    "basis_json",
    "clocks",
    "overdue_clocks",
    "retime",
]


class Status(StrEnum):
    REFERRED = "referred"  # waiting for the holder to report in (报到)
    ACCEPTED = "accepted"
    RECTIFYING = "rectifying"  # 限期整改 ordered, deadline running
    REINSPECTION_DUE = "reinspection_due"  # owner says fixed; 复查 due
    CLOSED = "closed"  # 整改销案
    DISMISSED = "dismissed"  # not a hazard after all (town office signs off)
    MERGED = "merged"  # duplicate of another hazard


class Action(StrEnum):
    ACCEPT = "accept"
    ORDER_RECTIFICATION = "order_rectification"
    ESCALATE = "escalate"
    TRANSFER = "transfer"  # 移送 to another unit of the same tier
    RETURN = "return"  # back to the previous holder ("not ours")
    DISMISS = "dismiss"
    RECORD_REINSPECTION = "record_reinspection"
    CLOSE = "close"
    REOPEN = "reopen"
    MERGE = "merge"
    OWNER_REPORTED_FIXED = "owner_reported_fixed"


S, A = Status, Action

# The one transition table. Decisions:
# - referred: the holder must first report in (accept) or pass the hazard on
#   (escalate / transfer / return), or dismiss / merge a bad or duplicate report.
#   No rectification order before accepting: accepting is the 报到 the figures count.
# - accepted: the holder orders rectification, or fixes it on the spot and
#   records a re-inspection with photos (当场改正), or closes with evidence or an
#   override reason; it may still pass the hazard on, dismiss or merge it.
# - rectifying: once an order is out the hazard is real: no return, dismiss or
#   merge. The owner may report it fixed, the holder re-inspects or closes, or
#   passes it up/over (escalate/transfer restart the clocks).
# - reinspection_due: only the 复查 and what follows (close), or escalate/transfer
#   when the re-inspection is overdue or belongs elsewhere.
# - closed / dismissed: only reopen (a relapse or a wrong dismissal), back to the
#   current holder with a fresh acknowledgement clock.
# - merged: terminal; the surviving hazard carries on.
# Return never closes a hazard (fixmystreet#4457): it goes back to the previous
# holder, status referred.
ALLOWED: dict[Status, frozenset[Action]] = {
    S.REFERRED: frozenset({A.ACCEPT, A.ESCALATE, A.TRANSFER, A.RETURN, A.DISMISS, A.MERGE}),
    S.ACCEPTED: frozenset(
        {
            A.ORDER_RECTIFICATION,
            A.ESCALATE,
            A.TRANSFER,
            A.RETURN,
            A.DISMISS,
            A.RECORD_REINSPECTION,
            A.CLOSE,
            A.MERGE,
        }
    ),
    S.RECTIFYING: frozenset(
        {A.ESCALATE, A.TRANSFER, A.OWNER_REPORTED_FIXED, A.RECORD_REINSPECTION, A.CLOSE}
    ),
    S.REINSPECTION_DUE: frozenset({A.RECORD_REINSPECTION, A.ESCALATE, A.TRANSFER, A.CLOSE}),
    S.CLOSED: frozenset({A.REOPEN}),
    S.DISMISSED: frozenset({A.REOPEN}),
    S.MERGED: frozenset(),
}

TERMINAL: frozenset[Status] = frozenset({S.CLOSED, S.DISMISSED, S.MERGED})


# -- errors ---------------------------------------------------------------------


class TransitionError(Exception):
    """The action is not allowed in the current status (-> 409 with the allowed ones)."""

    code = "transition_not_allowed"

    def __init__(self, status: Status, action: Action, allowed: list[str]) -> None:
        self.status = status
        self.action = action
        self.allowed = sorted(allowed)
        listed = ", ".join(self.allowed) or "none"
        super().__init__(f"action '{action}' is not allowed when status is '{status}'; allowed: {listed}")


class LifecycleError(Exception):
    """The action is allowed but cannot be applied with these parameters/state."""

    code = "lifecycle_error"


class MissingParameter(LifecycleError):
    code = "missing_parameter"

    def __init__(self, field_name: str, action: str | None = None) -> None:
        self.field = field_name
        self.action = action
        where = f" for action '{action}'" if action else ""
        super().__init__(f"parameter '{field_name}' is required{where}")


class InvalidParameter(LifecycleError):
    code = "invalid_parameter"

    def __init__(self, field_name: str, problem: str) -> None:
        self.field = field_name
        self.problem = problem
        super().__init__(f"parameter '{field_name}': {problem}")


class EvidenceRequired(LifecycleError):
    code = "evidence_required"

    def __init__(self, listed: bool = False) -> None:
        if listed:  # 挂牌督办 until closed out, and closed out on a re-inspection's photos (DOMAIN.md)
            super().__init__("a hazard under listed supervision (挂牌督办) closes only on a re-inspection with "
                             "photo evidence of the fix; an 'override_reason' is not enough")
        else:
            super().__init__(
                "closing needs a re-inspection with photo evidence of the fix, "
                "or an 'override_reason'"
            )


class NoPreviousHolder(LifecycleError):
    code = "no_previous_holder"

    def __init__(self) -> None:
        super().__init__("cannot return: the hazard has no previous holder (it was routed here first)")


class AlreadyListed(LifecycleError):
    code = "already_listed"

    def __init__(self) -> None:
        super().__init__(
            "cannot escalate: the brigade holds the hazard and it is already under county "
            "listed supervision (挂牌督办)"
        )


# -- state, params, effects ---------------------------------------------------------

# Each clock and the HazardState field holding its due instant, in the order they are re-timed (the
# 复查 clock may be counted from the 限期整改 deadline, so it comes after it).
DUE_FIELDS: dict[str, str] = {"ack": "ack_due", "order": "order_due", "rectify": "rectify_due",
                              "reinspect": "reinspect_due"}


def basis_json(basis: Mapping[str, ClockBasis]) -> dict[str, Any] | None:
    """The basis of a state's clocks as stored (hazards.clock_basis); None when no clock has one."""
    return {name: b.to_json() for name, b in basis.items()} or None


def basis_from_json(data: Mapping[str, Any] | None) -> dict[str, ClockBasis]:
    return {name: ClockBasis.from_json(b) for name, b in (data or {}).items() if name in DUE_FIELDS}


@dataclass(frozen=True)
class HazardState:
    status: Status
    tier: str
    holder_unit_id: str
    previous_holder_unit_id: str | None
    ack_due: datetime  # 报到 deadline (aware)
    rectify_due: datetime | None  # 限期整改 deadline
    reinspect_due: datetime | None  # 复查 deadline
    listed_supervision: bool  # 挂牌督办
    has_rectified_evidence: bool
    # Tier of the previous holder, so `return` restores it. Optional for
    # compatibility; when None, `return` needs params.to_tier.
    previous_tier: str | None = None
    # Written rectification order due (accepted -> order within N working days).
    order_due: datetime | None = None
    # clock name -> how its due was counted in working days (ClockBasis), for the clocks that were; a
    # clock absent here (an explicit deadline, or a hazard stored before bases were kept) is never
    # re-timed. An entry may outlive its clock; only running clocks are re-timed.
    basis: Mapping[str, ClockBasis] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ActionParams:
    deadline: datetime | None = None  # order_rectification; record_reinspection(rectified=False)
    reason: str | None = None  # transfer, return, dismiss, reopen (required); escalate (optional)
    to_unit_id: str | None = None  # escalate, transfer: resolved by the service
    to_tier: str | None = None  # return: only when state.previous_tier is unknown; transfer: a moved premises
    rectified: bool | None = None  # record_reinspection
    photos: int = 0  # record_reinspection: number of photos of the fix
    override_reason: str | None = None  # close without photo evidence
    town_office_signoff: bool = False  # dismiss
    holder_signoff: bool = False  # dismiss of a major or listed hazard: by its holder (the service checks who)
    merge_into_id: str | None = None  # merge
    note: str | None = None  # free text carried into effects
    # order_rectification: the deadline is the policy's default period, this many working days from now
    # (the service sets it; with ``deadline`` too, that deadline must be the one it counts to). Such a
    # deadline has a basis and follows calendar changes; an explicit one does not.
    deadline_workdays: int | None = None
    # accept: the written order's period when it is not the policy's order_workdays (a major hazard's)
    order_workdays: int | None = None
    # record_reinspection: a fix proven with photos closes the hazard (整改销案). False: it is recorded as
    # evidence and the holder closes it (a listed hazard re-inspected by anyone but its holder). None: True
    closes_out: bool | None = None
    # record_reinspection: when it was made (a phone's, captured offline), if before it reached the server;
    # decides only whether it was the 复查 after the deadline (never later than now)
    inspected_at: datetime | None = None
    # a new holder's (or a reopening's) acknowledgement within these calendar hours, when that comes before
    # ack_workdays (policy.ack_hours of the hazard's category; the service sets it)
    ack_hours: int | None = None


class EffectKind(StrEnum):
    REFERRAL_HOP = "referral_hop"  # new holder: {from_unit_id, to_unit_id, from_tier, to_tier, via, reason}
    CLOCK_STARTED = "clock_started"  # {clock, due}
    CLOCK_SATISFIED = "clock_satisfied"  # {clock, due, late}: met by the action (accept, close...)
    CLOCK_STOPPED = "clock_stopped"  # {clock, due, overdue}: cancelled (escalate, transfer...)
    ESCALATED = "escalated"  # {from_tier, to_tier, from_unit_id, to_unit_id, overdue_clocks, reason}
    COUNTY_LISTED_SUPERVISION = "county_listed_supervision"  # {unit_id, overdue_clocks, reason}
    RECTIFICATION_ORDERED = "rectification_ordered"  # {deadline, reinspect_due}
    OWNER_REPORTED_FIXED = "owner_reported_fixed"  # {reinspect_due}
    REINSPECTION_RECORDED = "reinspection_recorded"  # {rectified, photos, note}
    EVIDENCE_MISSING = "evidence_missing"  # {reason}
    CLOSED = "closed"  # {with_evidence, override_reason}
    DISMISSED = "dismissed"  # {reason}
    REOPENED = "reopened"  # {reason, holder_unit_id}
    MERGED = "merged"  # {into_id}
    ACCEPTED = "accepted"  # {unit_id, late}


@dataclass(frozen=True)
class Effect:
    kind: EffectKind
    data: Mapping[str, Any] = field(default_factory=dict)


# -- clocks ---------------------------------------------------------------------------


def clocks(state: HazardState) -> dict[str, datetime]:
    """The clocks running in this state: name -> due instant.

    referred: ack; accepted: order (the written order, when set); rectifying:
    rectify (owner's deadline) and reinspect (the holder's 复查 deadline, 3
    working days after it); reinspection_due: reinspect. Terminal statuses run
    no clock.
    """
    running: dict[str, datetime] = {}
    if state.status is Status.REFERRED:
        running["ack"] = state.ack_due
    elif state.status is Status.ACCEPTED and state.order_due is not None:
        running["order"] = state.order_due
    elif state.status is Status.RECTIFYING:
        if state.rectify_due is not None:
            running["rectify"] = state.rectify_due
        if state.reinspect_due is not None:
            running["reinspect"] = state.reinspect_due
    elif state.status is Status.REINSPECTION_DUE and state.reinspect_due is not None:
        running["reinspect"] = state.reinspect_due
    return running


def overdue_clocks(state: HazardState, now: datetime) -> list[str]:
    """Names of running clocks whose due instant is at or before ``now``."""
    _aware(now, "now")
    return [name for name, due in clocks(state).items() if due <= now]


# -- helpers --------------------------------------------------------------------------


def _aware(value: datetime, name: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidParameter(name, "must be an aware datetime (with a time zone)")


def _text(value: str | None, name: str, action: Action) -> str:
    if value is None or not str(value).strip():
        raise MissingParameter(name, action.value)
    return str(value).strip()


def _future_deadline(params: ActionParams, now: datetime, action: Action) -> datetime:
    if params.deadline is None:
        raise MissingParameter("deadline", action.value)
    _aware(params.deadline, "deadline")
    if params.deadline <= now:
        raise InvalidParameter("deadline", "must be in the future")
    return params.deadline


def _counted(calendar: WorkCalendar, start: datetime, n: int, from_clock: str | None = None) -> ClockBasis:
    return ClockBasis(after=calendar.count_day(start), workdays=n, from_clock=from_clock)


def _with_basis(state: HazardState, **changes: ClockBasis | None) -> dict[str, ClockBasis]:
    """The state's bases with ``changes`` applied (None: the clock has none, or no longer runs)."""
    out = dict(state.basis)
    for name, b in changes.items():
        if b is None:
            out.pop(name, None)
        else:
            out[name] = b
    return out


def _rectify_deadline(params: ActionParams, now: datetime, calendar: WorkCalendar,
                      action: Action) -> tuple[datetime, ClockBasis | None]:
    """The 限期整改 deadline of an order and its basis: the policy's default period (counted in working days)
    or the holder's explicit date (none)."""
    n = params.deadline_workdays
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise InvalidParameter("deadline_workdays", "must be a whole number of working days >= 0")
    if n is not None and params.deadline is None:
        try:
            deadline = calendar.add_workdays(now, n)
        except OverflowError:
            raise InvalidParameter("deadline_workdays", "too far in the future") from None
        if deadline <= now:  # pragma: no cover - the end of a day after now's own
            raise InvalidParameter("deadline", "must be in the future")
        return deadline, _counted(calendar, now, n)
    deadline = _future_deadline(params, now, action)
    if n is not None and deadline == calendar.add_workdays(now, n):
        return deadline, _counted(calendar, now, n)
    return deadline, None


def _reinspection_due(deadline: datetime, calendar: WorkCalendar, policy: Policy) -> datetime:
    """复查 due after the deadline; a deadline so far out that it has no such day is refused, not a crash."""
    try:
        return calendar.add_workdays(deadline, policy.reinspection_workdays)
    except OverflowError:
        raise InvalidParameter("deadline", "too far in the future: the calendar has no re-inspection day after it") from None


def _fresh_referral(
    state: HazardState,
    *,
    now: datetime,
    calendar: WorkCalendar,
    policy: Policy,
    tier: str,
    holder: str,
    previous_holder: str | None,
    previous_tier: str | None,
    ack_hours: int | None = None,
) -> HazardState:
    """Referred to ``holder`` with every clock restarted (zammad#5624)."""
    ack_due, ack_basis = ack_clock(now, calendar, policy, ack_hours)
    return replace(
        state,
        status=Status.REFERRED,
        tier=tier,
        holder_unit_id=holder,
        previous_holder_unit_id=previous_holder,
        previous_tier=previous_tier,
        ack_due=ack_due,
        rectify_due=None,
        reinspect_due=None,
        order_due=None,
        has_rectified_evidence=False,
        basis={"ack": ack_basis} if ack_basis is not None else {},
    )


def _hand_over(state: HazardState, params: ActionParams, action: Action, tier: str, now: datetime,
               calendar: WorkCalendar, policy: Policy) -> HazardState:
    """Escalate or transfer: the named unit becomes the holder, the current one its previous holder."""
    to_unit = _text(params.to_unit_id, "to_unit_id", action)
    if to_unit == state.holder_unit_id:
        raise InvalidParameter("to_unit_id", "is already the holder")
    return _fresh_referral(state, now=now, calendar=calendar, policy=policy, tier=tier, holder=to_unit,
                           previous_holder=state.holder_unit_id, previous_tier=state.tier, ack_hours=params.ack_hours)


def _clock_effects(old: HazardState, new: HazardState, action: Action, now: datetime) -> list[Effect]:
    before, after = clocks(old), clocks(new)
    out: list[Effect] = []
    satisfied_by = {
        Action.ACCEPT,
        Action.ORDER_RECTIFICATION,
        Action.CLOSE,
        Action.RECORD_REINSPECTION,
        Action.OWNER_REPORTED_FIXED,
    }
    for name, due in before.items():
        if after.get(name) == due:
            continue
        if action in satisfied_by and new.holder_unit_id == old.holder_unit_id:
            out.append(Effect(EffectKind.CLOCK_SATISFIED, {"clock": name, "due": due, "late": now > due}))
        else:
            out.append(Effect(EffectKind.CLOCK_STOPPED, {"clock": name, "due": due, "overdue": now > due}))
    for name, due in after.items():
        if before.get(name) != due:
            out.append(Effect(EffectKind.CLOCK_STARTED, {"clock": name, "due": due}))
    return out


# -- apply ----------------------------------------------------------------------------


def apply(
    state: HazardState,
    action: Action | str,
    params: ActionParams,
    now: datetime,
    calendar: WorkCalendar,
    policy: Policy,
) -> tuple[HazardState, list[Effect]]:
    """Apply ``action`` to ``state`` at ``now``. Pure; raises on a refused action."""
    try:
        action = Action(action)
    except ValueError:
        raise InvalidParameter("action", f"unknown action {action!r}") from None
    _aware(now, "now")
    allowed = ALLOWED[state.status]
    if action not in allowed:
        raise TransitionError(state.status, action, [a.value for a in allowed])

    effects: list[Effect] = []
    new: HazardState

    if action is Action.ACCEPT:
        days = params.order_workdays or policy.order_workdays
        new = replace(state, status=Status.ACCEPTED, order_due=calendar.add_workdays(now, days),
                      basis=_with_basis(state, order=_counted(calendar, now, days)))
        effects.append(
            Effect(EffectKind.ACCEPTED, {"unit_id": state.holder_unit_id, "late": now > state.ack_due})
        )

    elif action is Action.ORDER_RECTIFICATION:
        deadline, rectify_basis = _rectify_deadline(params, now, calendar, action)
        reinspect_due = _reinspection_due(deadline, calendar, policy)
        new = replace(
            state, status=Status.RECTIFYING, rectify_due=deadline, reinspect_due=reinspect_due, order_due=None,
            basis=_with_basis(state, order=None, rectify=rectify_basis,
                              reinspect=_counted(calendar, deadline, policy.reinspection_workdays, "rectify")),
        )
        effects.append(
            Effect(EffectKind.RECTIFICATION_ORDERED, {"deadline": deadline, "reinspect_due": reinspect_due})
        )

    elif action is Action.OWNER_REPORTED_FIXED:
        reinspect_due = calendar.add_workdays(now, policy.reinspection_workdays)
        new = replace(state, status=Status.REINSPECTION_DUE, reinspect_due=reinspect_due,
                      basis=_with_basis(state, reinspect=_counted(calendar, now, policy.reinspection_workdays)))
        effects.append(Effect(EffectKind.OWNER_REPORTED_FIXED, {"reinspect_due": reinspect_due}))

    elif action is Action.RECORD_REINSPECTION:
        if params.rectified is None:
            raise MissingParameter("rectified", action.value)
        if params.photos < 0:
            raise InvalidParameter("photos", "must be >= 0")
        effects.append(
            Effect(
                EffectKind.REINSPECTION_RECORDED,
                {"rectified": params.rectified, "photos": params.photos, "note": params.note},
            )
        )
        if params.rectified and params.photos >= 1 and params.closes_out is not False:
            new = replace(state, status=Status.CLOSED, has_rectified_evidence=True)
            effects.append(Effect(EffectKind.CLOSED, {"with_evidence": True, "override_reason": None}))
        elif params.rectified and params.photos >= 1:
            # the evidence is in; the holder closes out, within the 复查 period from now
            reinspect_due = calendar.add_workdays(now, policy.reinspection_workdays)
            new = replace(state, status=Status.REINSPECTION_DUE, has_rectified_evidence=True, reinspect_due=reinspect_due,
                          order_due=None,
                          basis=_with_basis(state, order=None,
                                            reinspect=_counted(calendar, now, policy.reinspection_workdays)))
        elif params.rectified:
            # Said fixed but no photo: nothing changes; the worker must add a photo
            # (or the holder closes with an override reason).
            new = state
            effects.append(
                Effect(EffectKind.EVIDENCE_MISSING, {"reason": "rectified without a photo of the fix"})
            )
        else:
            # Not fixed: (back to) rectifying. A new deadline is optional when one
            # is already set; the old one keeps running (and may be overdue).
            new_deadline = params.deadline is not None or params.deadline_workdays is not None
            if new_deadline:
                deadline, rectify_basis = _rectify_deadline(params, now, calendar, action)
            elif state.rectify_due is not None:
                deadline, rectify_basis = state.rectify_due, state.basis.get("rectify")
            else:
                raise MissingParameter("deadline", action.value)
            reinspect_due = _reinspection_due(deadline, calendar, policy)
            reinspect_basis = _counted(calendar, deadline, policy.reinspection_workdays, "rectify")
            inspected = min(params.inspected_at or now, now)
            if not new_deadline and deadline <= inspected:
                if _next_step_running(state):
                    # a second visit finding the same does not put the holder's next step off
                    reinspect_due, reinspect_basis = state.reinspect_due, state.basis["reinspect"]
                else:
                    # the 复查 after the deadline is this one, done: what is due now is the holder's next step, a
                    # new written order (or enforcement) within order_workdays of this inspection (令120号), not
                    # the same 复查 again, which the sweep would escalate as missed though it was done
                    reinspect_due = calendar.add_workdays(now, policy.order_workdays)
                    reinspect_basis = _counted(calendar, now, policy.order_workdays)
            new = replace(
                state,
                status=Status.RECTIFYING,
                rectify_due=deadline,
                reinspect_due=reinspect_due,
                order_due=None,
                has_rectified_evidence=False,
                basis=_with_basis(state, order=None, rectify=rectify_basis, reinspect=reinspect_basis),
            )
            if new_deadline:
                effects.append(
                    Effect(
                        EffectKind.RECTIFICATION_ORDERED,
                        {"deadline": deadline, "reinspect_due": reinspect_due},
                    )
                )

    elif action is Action.CLOSE:
        override = (params.override_reason or "").strip()
        if not state.has_rectified_evidence and (not override or state.listed_supervision):
            raise EvidenceRequired(listed=bool(override))
        new = replace(state, status=Status.CLOSED)
        effects.append(
            Effect(
                EffectKind.CLOSED,
                {"with_evidence": state.has_rectified_evidence, "override_reason": override or None},
            )
        )

    elif action is Action.ESCALATE:
        overdue = overdue_clocks(state, now)
        target = next_tier(state.tier)
        if target is None:
            # Past the brigade: the county committee's listed supervision.
            if state.listed_supervision:
                raise AlreadyListed()
            new = replace(state, listed_supervision=True)
            effects.append(
                Effect(
                    EffectKind.COUNTY_LISTED_SUPERVISION,
                    {"unit_id": state.holder_unit_id, "overdue_clocks": overdue, "reason": params.reason},
                )
            )
        else:
            new = _hand_over(state, params, action, target, now, calendar, policy)
            to_unit = new.holder_unit_id
            # a holder may escalate without giving a reason; the hop still says why it went up
            late = ", ".join(overdue)
            reason = params.reason or (f"持有单位提请上级处理，超期：{late} (escalated by its holder, overdue: {late})"
                                       if late else "持有单位提请上级处理 (escalated by its holder)")
            effects.append(
                Effect(
                    EffectKind.ESCALATED,
                    {
                        "from_tier": state.tier,
                        "to_tier": target,
                        "from_unit_id": state.holder_unit_id,
                        "to_unit_id": to_unit,
                        "overdue_clocks": overdue,
                        "reason": reason,
                    },
                )
            )
            effects.append(_hop(state, new, "escalate", reason))

    elif action is Action.TRANSFER:
        reason = _text(params.reason, "reason", action)
        # same tier, but for a premises that moved where the policy wants a higher one (the service sets
        # to_tier then; people cannot); the service checks the target unit's tier
        tier = params.to_tier or state.tier
        if tier not in TIER_ORDER:
            raise InvalidParameter("to_tier", f"must be one of {', '.join(TIER_ORDER)}")
        new = _hand_over(state, params, action, tier, now, calendar, policy)
        effects.append(_hop(state, new, "transfer", reason))

    elif action is Action.RETURN:
        reason = _text(params.reason, "reason", action)
        if not state.previous_holder_unit_id:
            raise NoPreviousHolder()
        tier = state.previous_tier or params.to_tier
        if tier is None:
            raise MissingParameter("to_tier", action.value)
        if tier not in TIER_ORDER:
            raise InvalidParameter("to_tier", f"must be one of {', '.join(TIER_ORDER)}")
        new = _fresh_referral(
            state,
            now=now,
            calendar=calendar,
            policy=policy,
            tier=tier,
            holder=state.previous_holder_unit_id,
            previous_holder=state.holder_unit_id,
            previous_tier=state.tier,
            ack_hours=params.ack_hours,
        )
        effects.append(_hop(state, new, "return", reason))

    elif action is Action.DISMISS:
        reason = _text(params.reason, "reason", action)
        if params.town_office_signoff is not True and params.holder_signoff is not True:
            raise MissingParameter("town_office_signoff", action.value)
        new = replace(state, status=Status.DISMISSED)
        effects.append(Effect(EffectKind.DISMISSED, {"reason": reason}))

    elif action is Action.REOPEN:
        reason = _text(params.reason, "reason", action)
        ack_due, ack_basis = ack_clock(now, calendar, policy, params.ack_hours)
        new = replace(
            state,
            status=Status.REFERRED,
            ack_due=ack_due,
            rectify_due=None,
            reinspect_due=None,
            order_due=None,
            has_rectified_evidence=False,
            basis={"ack": ack_basis} if ack_basis is not None else {},
        )
        effects.append(Effect(EffectKind.REOPENED, {"reason": reason, "holder_unit_id": state.holder_unit_id}))

    elif action is Action.MERGE:
        into = _text(params.merge_into_id, "merge_into_id", action)
        new = replace(state, status=Status.MERGED)
        effects.append(Effect(EffectKind.MERGED, {"into_id": into}))

    else:  # pragma: no cover - every Action is handled above
        raise AssertionError(action)

    effects.extend(_clock_effects(state, new, action, now))
    return new, effects


def _next_step_running(state: HazardState) -> bool:
    """Is the running 复查 clock the holder's next step after a 复查 past the deadline found it unfixed? In
    rectifying, the 复查 clock is counted from the deadline (``from_clock`` "rectify") but for that one."""
    basis = state.basis.get("reinspect")
    return (state.status is Status.RECTIFYING and state.reinspect_due is not None and basis is not None
            and basis.from_clock is None)


def _hop(old: HazardState, new: HazardState, via: str, reason: str | None) -> Effect:
    return Effect(
        EffectKind.REFERRAL_HOP,
        {
            "from_unit_id": old.holder_unit_id,
            "to_unit_id": new.holder_unit_id,
            "from_tier": old.tier,
            "to_tier": new.tier,
            "via": via,
            "reason": reason,
        },
    )


# -- re-timing after a calendar change --------------------------------------------------


@dataclass(frozen=True)
class Retimed:
    """One running clock counted again with a changed calendar: its due moved from ``old_due`` to
    ``new_due``; ``days``: the changed days (given to ``retime``) that lie in its window."""

    clock: str
    old_due: datetime
    new_due: datetime
    basis: ClockBasis
    days: tuple[date, ...] = ()


def retime(state: HazardState, calendar: WorkCalendar,
           changed_days: Collection[date] = ()) -> tuple[HazardState, list[Retimed]]:
    """Count every running clock of ``state`` that has a basis again with ``calendar`` (the override table
    as it now is). Returns the new state (same as ``state`` when nothing moved) and the clocks that moved.

    Only running clocks: a clock met or stopped is history. A clock without a basis (an explicit deadline,
    a hazard stored before bases were kept) stays as it is; one counted from it (复查 after an explicit
    deadline) is counted again from that deadline. A clock whose new due is already past stays overdue:
    re-timing never escalates nor undoes an escalation, the sweep acts on the new due. Pure."""
    running = clocks(state)
    basis = dict(state.basis)
    moved: dict[str, datetime] = {}
    out: list[Retimed] = []
    for name in DUE_FIELDS:
        b = basis.get(name)
        if name not in running or b is None:
            continue
        if b.from_clock is not None and b.from_clock in moved:
            b = replace(b, after=calendar.count_day(moved[b.from_clock]))
            basis[name] = b
        old = running[name]
        try:
            new = calendar.workdays_after(b.after, b.workdays)
        except OverflowError:  # pragma: no cover - a clock past the calendar's end stays where it is
            continue
        if new == old:
            continue
        moved[name] = new
        first = min(b.after, state.basis[name].after)
        last = max(calendar.count_day(old), calendar.count_day(new))
        days = tuple(sorted(d for d in changed_days if first < d <= last))
        out.append(Retimed(name, old, new, b, days))
    if not out:
        return state, []
    return replace(state, basis=basis, **{DUE_FIELDS[r.clock]: r.new_due for r in out}), out
