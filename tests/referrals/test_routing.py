"""Routing with the default policy (pure; no DB, no FastAPI).

The expectations are written out by hand from DOMAIN.md, never computed by the
code under test.
"""

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from app.referrals.calendar import WorkCalendar
from app.referrals.policy import load_policy, parse_policy
from app.referrals.routing import TIER_ORDER, Decision, Facts, RoutingError, next_tier, route

POLICY = load_policy()
CAL = WorkCalendar()
NOW = datetime(2024, 2, 8, 2, 0, tzinfo=UTC)  # Thu 2024-02-08 10:00 in Shanghai
ACK_DUE = datetime(2024, 2, 9, 16, 0, tzinfo=UTC)  # end of Fri 2-9, the last day before Spring Festival

UNITS = {"town_office": "U-TOWN", "police_station": "U-PS", "brigade": "U-BRIG"}
SECTOR = "U-EDU"

T, P, B = "town_office", "police_station", "brigade"

# Rule ids of the default policy, short names for the table below.
MAJOR = "major-to-brigade"
VKB = "violation-key-unit-brigade"
VP = "violation-to-police"
KB = "key-unit-brigade"
PS = "police-supervised"
VTE = "violation-town-enforcement"
DEF = "town-office-default"

# (place_class, severity) -> expected (tier, rule) for each of the four
# (violation, town_enforcement) combinations, in this column order:
#            (False, False)  (False, True)  (True, False)  (True, True)
EXPECTED_GENERAL = {
    "key_unit_1":   ((B, KB),  (B, KB),  (B, VKB), (B, KB)),
    "key_unit_2":   ((B, KB),  (B, KB),  (B, VKB), (B, KB)),
    "key_unit_3":   ((P, PS),  (P, PS),  (P, VP),  (P, PS)),
    "police_list":  ((P, PS),  (P, PS),  (P, VP),  (P, PS)),
    "nine_small":   ((T, DEF), (T, DEF), (P, VP),  (T, VTE)),
    "three_in_one": ((T, DEF), (T, DEF), (P, VP),  (T, VTE)),
    "rental":       ((T, DEF), (T, DEF), (P, VP),  (T, VTE)),
    "self_built":   ((T, DEF), (T, DEF), (P, VP),  (T, VTE)),
    "crowded":      ((T, DEF), (T, DEF), (P, VP),  (T, VTE)),
    "residential":  ((T, DEF), (T, DEF), (P, VP),  (T, VTE)),
    "other":        ((T, DEF), (T, DEF), (P, VP),  (T, VTE)),
}  # fmt: skip
# A major hazard (重大火灾隐患) always goes to the brigade on listed supervision.
EXPECTED_MAJOR = {pc: ((B, MAJOR),) * 4 for pc in EXPECTED_GENERAL}
COMBOS = ((False, False), (False, True), (True, False), (True, True))

# Who is copied, by rule (unit ids; the holder is never copied).
EXPECTED_CC = {
    MAJOR: ("U-TOWN", "U-PS", "U-EDU"),
    VKB: ("U-TOWN",),
    VP: ("U-TOWN",),
    KB: ("U-TOWN",),
    PS: ("U-TOWN",),
    VTE: (),
    DEF: (),
}

CASES = []
for severity, table in (("general", EXPECTED_GENERAL), ("major", EXPECTED_MAJOR)):
    for place_class, row in table.items():
        for (violation, town_enforcement), (tier, rule) in zip(COMBOS, row, strict=True):
            CASES.append(
                pytest.param(
                    place_class, severity, violation, town_enforcement, tier, rule,
                    id=f"{place_class}-{severity}-v{int(violation)}-te{int(town_enforcement)}",
                )
            )  # fmt: skip


def facts(**overrides) -> Facts:
    base = Facts(
        place_class="rental",
        severity="general",
        violation=False,
        category="ebike_indoor",
        town_enforcement=False,
        units=dict(UNITS),
        now=NOW,
        sector_regulator_unit_id=SECTOR,
    )
    return replace(base, **overrides)


def test_the_table_covers_every_place_class_of_the_policy():
    assert len(CASES) == 11 * 2 * 2 * 2
    assert set(EXPECTED_GENERAL) == set(POLICY.place_classes)


def test_every_default_rule_is_exercised():
    exercised = {p.values[5] for p in CASES}
    assert exercised == {r.id for r in POLICY.rules}


@pytest.mark.parametrize(
    ("place_class", "severity", "violation", "town_enforcement", "tier", "rule"), CASES
)
def test_default_policy_routing(place_class, severity, violation, town_enforcement, tier, rule):
    decision = route(
        facts(
            place_class=place_class,
            severity=severity,
            violation=violation,
            town_enforcement=town_enforcement,
        ),
        POLICY,
        CAL,
    )
    assert isinstance(decision, Decision)
    assert (decision.tier, decision.rule) == (tier, rule)
    assert decision.unit_id == UNITS[tier]
    assert decision.cc == EXPECTED_CC[rule]
    assert decision.unit_id not in decision.cc
    assert decision.listed_supervision is (severity == "major")
    assert decision.policy_version == POLICY.version
    assert decision.reason_zh and decision.reason_en
    assert decision.ack_due == ACK_DUE
    assert decision.rectify_days == 3  # ebike_indoor


@pytest.mark.parametrize(
    ("category", "days"),
    [
        ("blocked_exit", 1),
        ("ebike_indoor", 3),
        ("improvised_wiring", 10),
        ("sandwich_panel", 30),
        ("other", 15),
        ("not_a_category", 15),  # unknown -> "default"
    ],
)
def test_rectify_days_by_category(category, days):
    assert route(facts(category=category), POLICY, CAL).rectify_days == days


def test_ack_due_crosses_the_holiday():
    # Reported Friday 2024-02-09 afternoon: the next working day is the adjusted Sunday 2-18.
    d = route(facts(now=datetime(2024, 2, 9, 7, tzinfo=UTC)), POLICY, CAL)
    assert d.ack_due == datetime(2024, 2, 18, 16, tzinfo=UTC)


def test_missing_sector_regulator_is_skipped():
    d = route(facts(severity="major", sector_regulator_unit_id=None), POLICY, CAL)
    assert d.cc == ("U-TOWN", "U-PS")


def test_cc_is_deduplicated_and_never_contains_the_holder():
    # One unit plays several tiers (e.g. a town whose police station is also the holder).
    units = {"town_office": "U-X", "police_station": "U-X", "brigade": "U-BRIG"}
    d = route(facts(severity="major", units=units, sector_regulator_unit_id="U-BRIG"), POLICY, CAL)
    assert d.unit_id == "U-BRIG"
    assert d.cc == ("U-X",)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"units": {"town_office": "U-TOWN", "police_station": "U-PS"}, "severity": "major"}, "brigade unit (holder)"),
        ({"units": {"brigade": "U-BRIG"}, "severity": "major"}, "town_office unit (cc)"),
        ({"units": {}, "place_class": "rental"}, "town_office unit (holder)"),
        ({"place_class": "castle"}, "unknown place class 'castle'"),
        ({"severity": "critical"}, "unknown severity 'critical'"),
    ],
)
def test_routing_errors(overrides, message):
    with pytest.raises(RoutingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        route(facts(**overrides), POLICY, CAL)


def test_naive_now_is_rejected():
    with pytest.raises(ValueError, match="aware"):
        route(facts(now=datetime(2024, 2, 8, 10)), POLICY, CAL)


def test_route_is_pure():
    f = facts(severity="major", violation=True)
    assert route(f, POLICY, CAL) == route(f, POLICY, CAL)
    assert f.units == UNITS


def test_first_match_wins_in_a_custom_policy():
    text = """
version = "custom-7"
place_classes = ["rental", "other"]
[rectification_workdays]
default = 5
[[categories]]
code = "ebike_indoor"
name_zh = "电动自行车违规停放充电"
name_en = "E-bikes indoors"
[[rules]]
id = "ebikes-to-police"
category = ["ebike_indoor"]
tier = "police_station"
reason_zh = "电动车"
reason_en = "E-bikes"
[[rules]]
id = "rental-to-brigade"
place_class = ["rental"]
tier = "brigade"
reason_zh = "出租屋"
reason_en = "Rental"
[[rules]]
id = "rest"
tier = "town_office"
reason_zh = "其他"
reason_en = "Rest"
"""
    policy = parse_policy(text, "custom.toml")
    assert route(facts(category="ebike_indoor"), policy, CAL).rule == "ebikes-to-police"
    assert route(facts(category="blocked_exit"), policy, CAL).rule == "rental-to-brigade"
    d = route(facts(category="blocked_exit", place_class="other"), policy, CAL)
    assert (d.rule, d.tier, d.policy_version, d.rectify_days) == ("rest", "town_office", "custom-7", 5)


@pytest.mark.parametrize(
    ("tier", "expected"),
    [("town_office", "police_station"), ("police_station", "brigade"), ("brigade", None)],
)
def test_next_tier(tier, expected):
    assert next_tier(tier) == expected


def test_next_tier_unknown():
    with pytest.raises(ValueError, match="unknown tier"):
        next_tier("county")


def test_tier_order():
    assert TIER_ORDER == ("town_office", "police_station", "brigade")
    chain, tier = [], "town_office"
    while tier is not None:
        chain.append(tier)
        tier = next_tier(tier)
    assert chain == list(TIER_ORDER)
