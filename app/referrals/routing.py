"""Route a hazard to the right tier: route(facts, policy, calendar) -> Decision.

PURE: no database, no web framework. The service gathers the facts (the place's
class, the hazard's severity, violation flag and category, whether the town
holds enforcement power, and the org units of each tier for the place's
town/county), calls ``route`` and stores the decision, including the rule id,
the reasons and the policy version, on the hazard's timeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .calendar import ClockBasis, WorkCalendar
from .policy import CC_SECTOR_REGULATOR, SEVERITIES, TIERS, Policy, Rule

__all__ = ["TIER_ORDER", "Decision", "Facts", "RoutingError", "match_rule", "next_tier", "route", "supervising_tier"]

# Lowest to highest. Past the brigade comes the county committee's listed
# supervision (挂牌督办), which is a flag, not a holder.
TIER_ORDER: tuple[str, ...] = ("town_office", "police_station", "brigade")
assert TIER_ORDER == TIERS


class RoutingError(Exception):
    """The facts cannot be routed (unknown place class, missing org unit for a tier...)."""


@dataclass(frozen=True)
class Facts:
    place_class: str
    severity: str  # "general" | "major"
    violation: bool  # 消防违法行为
    category: str
    town_enforcement: bool  # the town was granted enforcement power
    units: Mapping[str, str]  # tier -> org unit id for the place's town/county
    now: datetime
    sector_regulator_unit_id: str | None = None


@dataclass(frozen=True)
class Decision:
    tier: str
    unit_id: str  # the holder
    cc: tuple[str, ...]  # org unit ids copied; deduplicated, never the holder
    listed_supervision: bool
    rule: str  # id of the rule that matched
    reason_zh: str
    reason_en: str
    policy_version: str
    ack_due: datetime  # aware UTC
    rectify_days: int  # default rectification period (working days) for the category
    # how ack_due was counted (ack_workdays after the day of ``now``), so a calendar change re-times it
    ack_basis: ClockBasis | None = None


def ack_clock(now: datetime, calendar: WorkCalendar, policy: Policy,
              hours: int | None = None) -> tuple[datetime, ClockBasis | None]:
    """The acknowledgement (报到) clock started at ``now``: ack_workdays, or ``hours`` calendar hours when that
    comes sooner (a blocked escape route: 24 hours, 令120号). Hours have no working-day basis: a calendar
    change does not move them. In UTC, as add_workdays gives."""
    due = calendar.add_workdays(now, policy.ack_workdays)
    if hours is not None and now + timedelta(hours=hours) < due:
        return (now + timedelta(hours=hours)).astimezone(timezone.utc), None
    return due, ClockBasis(after=calendar.count_day(now), workdays=policy.ack_workdays)


def next_tier(tier: str) -> str | None:
    """The tier above ``tier``; None past the brigade (county listed supervision)."""
    try:
        i = TIER_ORDER.index(tier)
    except ValueError:
        raise ValueError(f"unknown tier {tier!r}; must be one of {', '.join(TIER_ORDER)}") from None
    return TIER_ORDER[i + 1] if i + 1 < len(TIER_ORDER) else None


def match_rule(facts: Facts, policy: Policy) -> Rule:
    """The first rule of the policy that matches the facts."""
    if facts.place_class not in policy.place_classes:
        raise RoutingError(
            f"unknown place class {facts.place_class!r} (policy {policy.version} knows "
            f"{', '.join(policy.place_classes)})"
        )
    if facts.severity not in SEVERITIES:
        raise RoutingError(f"unknown severity {facts.severity!r}; must be one of {', '.join(SEVERITIES)}")
    for rule in policy.rules:
        if rule.matches(
            place_class=facts.place_class,
            severity=facts.severity,
            violation=bool(facts.violation),
            town_enforcement=bool(facts.town_enforcement),
            category=facts.category,
        ):
            return rule
    # Unreachable with a validated policy (the last rule is a catch-all).
    raise RoutingError(f"no rule of policy {policy.version} matches")  # pragma: no cover


def supervising_tier(place_class: str, policy: Policy) -> str | None:
    """The tier that supervises premises of this class (seed 003, 四): where the policy sends a general
    hazard found there that is no fire-law violation, whatever the town's enforcement power (the higher
    of the two, should a policy tell them apart). Rules that name categories say what was found, not who
    supervises the premises: they are passed over. None for a class the policy does not know."""
    if place_class not in policy.place_classes:
        return None
    found = []
    for enforcement in (False, True):
        for rule in policy.rules:
            if rule.category is None and rule.matches(place_class=place_class, severity="general", violation=False,
                                                      town_enforcement=enforcement, category=""):
                found.append(rule.tier)
                break
    return max(found, key=TIER_ORDER.index, default=None)


def _unit_for(facts: Facts, tier: str, rule: Rule, role: str) -> str:
    unit = facts.units.get(tier)
    if not unit:
        raise RoutingError(
            f"rule '{rule.id}' needs a {tier} unit ({role}) but none is configured for this "
            f"place's town/county (units given: {', '.join(sorted(facts.units)) or 'none'})"
        )
    return unit


def route(facts: Facts, policy: Policy, calendar: WorkCalendar) -> Decision:
    """Apply the policy to the facts. Pure: same inputs, same decision."""
    rule = match_rule(facts, policy)
    holder = _unit_for(facts, rule.tier, rule, "holder")

    cc: list[str] = []
    for target in rule.cc:
        if target == CC_SECTOR_REGULATOR:
            unit = facts.sector_regulator_unit_id  # none for e.g. residential: skipped
        else:
            unit = _unit_for(facts, target, rule, "cc")
        if unit and unit != holder and unit not in cc:
            cc.append(unit)

    ack_due, ack_basis = ack_clock(facts.now, calendar, policy, policy.ack_hours.get(facts.category))
    return Decision(
        tier=rule.tier,
        unit_id=holder,
        cc=tuple(cc),
        listed_supervision=rule.listed_supervision,
        rule=rule.id,
        reason_zh=rule.reason_zh,
        reason_en=rule.reason_en,
        policy_version=policy.version,
        ack_due=ack_due,
        rectify_days=policy.rectify_days(facts.category),
        ack_basis=ack_basis,
    )
