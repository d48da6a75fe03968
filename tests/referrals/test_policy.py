"""Loading and validating the routing policy file (pure; no DB, no FastAPI)."""

import textwrap

import pytest

from app.referrals.policy import (
    DEFAULT_POLICY_PATH,
    Policy,
    PolicyError,
    Rule,
    load_policy,
    parse_policy,
)

# A small valid policy; the error cases below each break one thing in it.
VALID = textwrap.dedent(
    """
    version = "test-1"
    ack_workdays = 1
    reinspection_workdays = 3
    place_classes = ["key_unit_1", "rental", "other"]

    [rectification_workdays]
    default = 15
    blocked_exit = 1

    [[categories]]
    code = "blocked_exit"
    name_zh = "堵塞疏散通道"
    name_en = "Blocked escape route"

    [[categories]]
    code = "other"
    name_zh = "其他"
    name_en = "Other"

    [[rules]]
    id = "major-to-brigade"
    severity = "major"
    tier = "brigade"
    cc = ["town_office", "sector_regulator"]
    listed_supervision = true
    reason_zh = "重大火灾隐患"
    reason_en = "Major hazard"

    [[rules]]
    id = "key-unit"
    place_class = ["key_unit_1"]
    tier = "brigade"
    reason_zh = "重点单位"
    reason_en = "Key unit"

    [[rules]]
    id = "catch-all"
    tier = "town_office"
    reason_zh = "一般隐患"
    reason_en = "General hazard"
    """
)


def broken(old: str, new: str) -> str:
    assert old in VALID, f"test setup: {old!r} not in VALID"
    return VALID.replace(old, new, 1)


def test_valid_policy_parses():
    policy = parse_policy(VALID, "policy.toml")
    assert isinstance(policy, Policy)
    assert policy.version == "test-1"
    assert [r.id for r in policy.rules] == ["major-to-brigade", "key-unit", "catch-all"]
    assert policy.rules[0].listed_supervision is True
    assert policy.rules[-1].is_catch_all
    assert policy.rectify_days("blocked_exit") == 1
    assert policy.rectify_days("other") == 15  # not listed: default
    assert policy.rectify_days("no_such_category") == 15


@pytest.mark.parametrize(
    ("text", "expected_parts"),
    [
        pytest.param(
            broken('tier = "brigade"\ncc', 'tier = "county"\ncc'),
            [
                "policy.toml: rule 'major-to-brigade': field 'tier': must be one of "
                "town_office, police_station, brigade"
            ],
            id="bad-tier",
        ),
        pytest.param(
            broken('id = "key-unit"', 'id = "major-to-brigade"'),
            ["policy.toml: rule 'major-to-brigade': field 'id': duplicate rule id"],
            id="duplicate-id",
        ),
        pytest.param(
            broken('place_class = ["key_unit_1"]', 'place_class = ["key_unit_9"]'),
            ["policy.toml: rule 'key-unit': field 'place_class': unknown place class 'key_unit_9'"],
            id="unknown-place-class",
        ),
        pytest.param(
            broken('id = "catch-all"\ntier', 'id = "catch-all"\nviolation = true\ntier'),
            ["policy.toml: rule 'catch-all':", "last rule must be a catch-all"],
            id="missing-catch-all",
        ),
        pytest.param(
            broken('version = "test-1"', 'version = "test-1'),
            ["policy.toml: invalid TOML", "line 2"],
            id="bad-toml-syntax",
        ),
        pytest.param(
            broken('cc = ["town_office", "sector_regulator"]', 'cc = ["town_office", "mayor"]'),
            ["policy.toml: rule 'major-to-brigade': field 'cc.1': must be one of", "sector_regulator"],
            id="bad-cc",
        ),
        pytest.param(
            broken('severity = "major"', 'severity = "critical"'),
            ["policy.toml: rule 'major-to-brigade': field 'severity': must be one of general, major"],
            id="bad-severity",
        ),
        pytest.param(
            broken('id = "key-unit"\n', ""),
            ["policy.toml: rule #2: field 'id': is required"],
            id="missing-id-uses-index",
        ),
        pytest.param(
            broken('tier = "brigade"\nreason_zh = "重点单位"', 'teir = "brigade"\nreason_zh = "重点单位"'),
            ["policy.toml: rule 'key-unit': field 'tier': is required", "rule 'key-unit': field 'teir': unknown field"],
            id="typo-field",
        ),
        pytest.param(
            broken("blocked_exit = 1", "blocked_exit = 0"),
            ["policy.toml: field 'rectification_workdays.blocked_exit': must be greater than 0"],
            id="non-positive-days",
        ),
        pytest.param(
            broken("ack_workdays = 1", "ack_workdays = -2"),
            ["policy.toml: field 'ack_workdays': must be greater than 0"],
            id="non-positive-ack",
        ),
        pytest.param(
            broken("blocked_exit = 1", "blocked_exits = 1"),
            ["policy.toml: field 'rectification_workdays.blocked_exits': unknown category 'blocked_exits'"],
            id="unknown-rectification-category",
        ),
        pytest.param(
            broken("default = 15\n", ""),
            ["policy.toml: field 'rectification_workdays': must contain a 'default' entry"],
            id="missing-default-days",
        ),
        pytest.param(
            broken('code = "other"', 'code = "blocked_exit"'),
            ["policy.toml: category 'blocked_exit' (#2): field 'code': duplicate category code"],
            id="duplicate-category",
        ),
        pytest.param(
            broken('place_classes = ["key_unit_1", "rental", "other"]', 'place_classes = ["key_unit_1", "rental", "rental", "other"]'),
            ["policy.toml: field 'place_classes': duplicate place class 'rental'"],
            id="duplicate-place-class",
        ),
        pytest.param(
            broken('[[rules]]\nid = "key-unit"\nplace_class = ["key_unit_1"]\n', '[[rules]]\nid = "key-unit"\n'),
            ["policy.toml: rule 'catch-all': unreachable: it comes after the catch-all rule 'key-unit'"],
            id="rule-after-catch-all",
        ),
        pytest.param(
            broken('place_class = ["key_unit_1"]', "place_class = []"),
            ["policy.toml: rule 'key-unit': field 'place_class':"],
            id="empty-match-list",
        ),
        pytest.param(
            broken('version = "test-1"\n', ""),
            ["policy.toml: field 'version': is required"],
            id="missing-version",
        ),
    ],
)
def test_validation_errors_name_file_rule_and_field(text, expected_parts):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "policy.toml")
    message = str(info.value)
    for part in expected_parts:
        assert part in message, f"{part!r} not in:\n{message}"
    assert info.value.source == "policy.toml"
    assert info.value.errors
    assert all(line.startswith("policy.toml: ") for line in message.splitlines())


def test_several_errors_are_all_reported():
    text = broken('tier = "brigade"\ncc', 'tier = "county"\ncc').replace(
        'place_class = ["key_unit_1"]', 'place_class = ["key_unit_1"]\nseverity = "huge"'
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "town.toml")
    assert len(info.value.errors) == 2
    assert "town.toml: rule 'major-to-brigade': field 'tier'" in str(info.value)
    assert "town.toml: rule 'key-unit': field 'severity'" in str(info.value)


def test_load_policy_names_the_path(tmp_path):
    path = tmp_path / "county.toml"
    path.write_text(broken('tier = "brigade"\ncc', 'tier = "police"\ncc'), encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert f"{path}: rule 'major-to-brigade': field 'tier'" in str(info.value)


def test_load_policy_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(path) in str(info.value)
    assert "cannot read policy file" in str(info.value)


def test_load_policy_reads_a_valid_file(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(VALID, encoding="utf-8")
    assert load_policy(path).version == "test-1"


# -- the shipped default policy -------------------------------------------------

DOMAIN_PLACE_CLASSES = [
    "key_unit_1", "key_unit_2", "key_unit_3", "police_list", "nine_small", "three_in_one",
    "rental", "self_built", "crowded", "residential", "other",
]  # fmt: skip

DOMAIN_CATEGORIES = {
    "blocked_exit", "insufficient_exits", "sandwich_panel", "ebike_indoor", "window_bars",
    "three_in_one_mix", "improvised_wiring", "lpg_misuse", "flammable_partition",
    "missing_alarm_extinguisher", "missing_sprinkler", "flammables_storage",
    "hydrant_obstructed", "other",
}  # fmt: skip


def test_default_policy_loads_and_covers_the_domain():
    policy = load_policy(DEFAULT_POLICY_PATH)
    assert policy.version
    assert policy.place_classes == DOMAIN_PLACE_CLASSES
    assert policy.category_codes == DOMAIN_CATEGORIES
    assert policy.ack_workdays == 1
    assert policy.reinspection_workdays == 3
    assert policy.rules[-1].is_catch_all
    assert policy.rules[-1].tier == "town_office"
    # every category has an explicit rectification default, plus "default"
    assert set(policy.rectification_workdays) == DOMAIN_CATEGORIES | {"default"}
    assert policy.rectify_days("blocked_exit") == 1
    assert policy.rectify_days("ebike_indoor") == 3
    assert policy.rectify_days("improvised_wiring") == 10
    assert policy.rectify_days("sandwich_panel") == 30
    assert policy.rectify_days("unheard_of") == policy.rectification_workdays["default"] == 15
    for rule in policy.rules:
        assert rule.reason_zh.strip() and "\n" not in rule.reason_zh
        assert rule.reason_en.strip() and "\n" not in rule.reason_en
    for cat in policy.categories:
        assert cat.name_zh and cat.name_en


def test_default_policy_blocked_exit_is_named_in_chinese():
    policy = load_policy()
    cat = policy.category("blocked_exit")
    assert cat is not None and "疏散通道" in cat.name_zh
    assert "电动自行车" in policy.category("ebike_indoor").name_zh


def test_rule_matching_semantics():
    rule = Rule(
        id="r",
        place_class=["rental"],
        violation=True,
        tier="police_station",
        reason_zh="理由",
        reason_en="reason",
    )
    base = dict(place_class="rental", severity="general", violation=True, town_enforcement=False, category="x")
    assert rule.matches(**base)
    assert rule.matches(**{**base, "severity": "major", "town_enforcement": True})  # unconstrained
    assert not rule.matches(**{**base, "violation": False})
    assert not rule.matches(**{**base, "place_class": "other"})
    assert not rule.is_catch_all


def test_policy_models_are_immutable():
    policy = parse_policy(VALID, "policy.toml")
    with pytest.raises(Exception):
        policy.version = "changed"  # type: ignore[misc]
    assert policy.version == "test-1"
