"""A category taken out of the routing policy: phones that pull after the change are told it is gone
(a tombstone, as for any record that leaves them), and a report captured with it before the change is
kept when the policy retires the category rather than deleting it outright."""

import base64
import json
from datetime import timedelta

import pytest
from sqlmodel import select

from app.hazards.models import Hazard
from app.referrals.policy import Policy, PolicyError, load_policy, parse_policy
from app.sync import service
from tests.conftest import login
from tests.helpers import hazard_data, op, push
from tests.sync.test_pull import pull_all
from tests.sync.test_push import NOW as PUSH_NOW, place, worker  # noqa: F401  (place, worker: fixtures)

GONE = "lpg_misuse"


def _without(policy: Policy, code: str = GONE, *, retire: bool = False, version: str | None = None) -> Policy:
    """The policy with the category taken out (and out of the rules and periods that named it)."""
    raw = policy.model_dump(mode="json", exclude_defaults=False)
    [removed] = [c for c in raw["categories"] if c["code"] == code]
    raw["categories"] = [c for c in raw["categories"] if c["code"] != code]
    raw["rectification_workdays"].pop(code, None)
    rules = []
    for rule in raw["rules"]:
        if rule.get("category") and code in rule["category"]:
            rule["category"] = [c for c in rule["category"] if c != code]
            if not rule["category"]:
                continue
        rules.append(rule)
    raw["rules"] = rules
    raw["version"] = version or f"{policy.version}-without-{code}"
    if retire:
        raw["retired_categories"] = [*raw.get("retired_categories", []), removed]
    return Policy.model_validate(raw)


def _categories(changes: list[dict]) -> dict[str, bool]:
    """What the device holds after applying these changes in order: code -> still there."""
    held: dict[str, bool] = {}
    for ch in changes:
        if ch["type"] == "category":
            held[ch["id"]] = not ch["deleted"]
    return held


@pytest.fixture
def c(client):
    return client


@pytest.mark.parametrize("retire", [False, True], ids=["deleted", "retired"])
@pytest.mark.parametrize("limit", [None, 3])
def test_a_phone_that_pulls_after_a_category_is_removed_is_told_it_is_gone(c, retire, limit):
    phone = login(c, "worker-a1", device="phone-1")
    old = c.app.state.policy
    first, cursor, _ = pull_all(c, phone, limit=limit)
    assert _categories(first)[GONE] is True
    c.app.state.policy = _without(old, retire=retire)
    changes, cursor, _ = pull_all(c, phone, cursor, limit=limit)
    gone = [ch for ch in changes if ch["type"] == "category" and ch["id"] == GONE]
    assert gone and gone[-1]["deleted"] is True, changes
    if retire:  # still accepted in reports, so still named
        assert gone[-1]["data"]["reason"] == "retired" and gone[-1]["data"]["name_zh"]
    held = {code for code, there in _categories(first + changes).items() if there}
    assert held == set(c.app.state.policy.category_codes)
    [template] = [ch for ch in changes if ch["type"] == "checklist_template"]
    assert GONE not in [i["item"] for i in template["data"]["items"]]
    # told once: the next pull has nothing new
    assert pull_all(c, phone, cursor)[0] == []
    # and brought back, it is offered again
    c.app.state.policy = old.model_copy(update={"version": old.version + "-again"})
    again, _, _ = pull_all(c, phone, cursor, limit=limit)
    assert _categories(again)[GONE] is True


def test_a_phone_whose_pull_began_before_the_change_is_told_on_its_next_pull(c):
    """The change lands while the phone pages its first pull (a rolling restart): it learns of it after."""
    phone = login(c, "worker-a1", device="phone-1")
    old = c.app.state.policy
    page = c.get("/api/v1/sync/pull", params={"limit": 10}, headers=phone).json()
    assert _categories(page["changes"])[GONE] is True
    c.app.state.policy = _without(old)
    rest, cursor, _ = pull_all(c, phone, page["cursor"], limit=5)
    after, _, _ = pull_all(c, phone, cursor)
    held = {code for code, there in _categories(page["changes"] + rest + after).items() if there}
    assert held == set(c.app.state.policy.category_codes)


@pytest.mark.parametrize("path", ["bulk", "op by op"])
def test_a_report_captured_under_a_retired_category_is_kept(clocked_client, worker, place, session, path,
                                                             monkeypatch):
    """The phone captured it before it heard of the change: refusing it loses what the worker found."""
    clocked_client.app.state.policy = _without(clocked_client.app.state.policy, retire=True)
    captured = hazard_data(place.id, PUSH_NOW - timedelta(hours=2), category=GONE)
    unknown = hazard_data(place.id, PUSH_NOW, category="dragons")
    inspection = {"id": hazard_data(place.id, PUSH_NOW)["id"], "place_id": place.id,
                  "started_at": (PUSH_NOW - timedelta(hours=3)).isoformat(),
                  "hazards": [hazard_data(place.id, PUSH_NOW - timedelta(hours=3), category=GONE)]}
    with monkeypatch.context() as m:
        if path == "op by op":
            m.setattr(service, "_write_run", lambda ctx, plan: None)
        results = push(clocked_client, worker, op("hazard.report", captured), op("hazard.report", unknown),
                       op("inspection.submit", inspection))
    assert [r["status"] for r in results] == ["applied", "rejected", "applied"], results
    assert results[1]["error"]["code"] == "unknown_category" and results[1]["error"]["field"] == "data.category"
    stored = session.exec(select(Hazard).where(Hazard.id.in_([captured["id"], inspection["hazards"][0]["id"]]))).all()
    assert sorted(h.category for h in stored) == [GONE, GONE]
    assert all(h.status == "referred" and h.holder_unit_id for h in stored)


def test_a_report_under_a_category_deleted_outright_is_refused_with_what_to_do(clocked_client, worker, place):
    clocked_client.app.state.policy = _without(clocked_client.app.state.policy)
    [r] = push(clocked_client, worker, op("hazard.report", hazard_data(place.id, PUSH_NOW, category=GONE)))
    assert r["status"] == "rejected" and r["error"]["code"] == "unknown_category", r
    assert clocked_client.app.state.policy.version in r["error"]["message"]


def test_a_retired_category_is_not_current_and_may_still_be_routed_apart():
    from datetime import datetime, timezone

    from app.referrals.calendar import WorkCalendar
    from app.referrals.routing import Facts, route

    policy = load_policy()
    retired = _without(policy, retire=True)
    assert GONE not in retired.category_codes and GONE in retired.retired_codes
    assert retired.accepts_category(GONE) and not _without(policy).accepts_category(GONE)
    raw = retired.model_dump(mode="json")
    raw["retired_categories"].append(raw["categories"][0])  # both current and retired
    with pytest.raises(Exception, match="retired"):
        Policy.model_validate(raw)
    text = ('version = "v"\nplace_classes = ["rental"]\n[rectification_workdays]\ndefault = 5\nb = 2\n'
            '[[categories]]\ncode = "a"\nname_zh = "甲"\nname_en = "A"\n'
            '[[retired_categories]]\ncode = "b"\nname_zh = "乙"\nname_en = "B"\n'
            '[[rules]]\nid = "b-rule"\ncategory = ["b"]\ntier = "brigade"\nreason_zh = "乙"\nreason_en = "B"\n'
            '[[rules]]\nid = "all"\ntier = "town_office"\nreason_zh = "全"\nreason_en = "all"\n')
    routed = route(Facts(place_class="rental", severity="general", violation=False, category="b",
                         town_enforcement=False, units={"brigade": "u1", "town_office": "u2"},
                         now=datetime(2026, 3, 2, 1, tzinfo=timezone.utc)), parse_policy(text), WorkCalendar())
    assert (routed.rule, routed.rectify_days) == ("b-rule", 2)
    with pytest.raises(PolicyError, match="rule 'b-rule': field 'category': unknown category 'b'"):
        parse_policy(text.replace("[[retired_categories]]\ncode = \"b\"", "[[retired_categories]]\ncode = \"c\""))


def _recode(cursor: str, **changes) -> str:
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for key, value in changes.items():
        if value is _DROP:
            raw.pop(key, None)
        else:
            raw[key] = value
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


_DROP = object()


def test_a_cursor_made_before_the_codes_were_kept_still_serves_and_learns_of_retired_categories(c):
    """Resting cursors already on phones hold no category codes: not a 410, and a retired category still
    reaches them as a tombstone (one deleted outright cannot: the server no longer knows it)."""
    phone = login(c, "worker-a1", device="phone-1")
    _, cursor, _ = pull_all(c, phone)
    c.app.state.policy = _without(c.app.state.policy, retire=True)
    changes, _, _ = pull_all(c, phone, _recode(cursor, c=_DROP, g=_DROP))
    assert _categories(changes)[GONE] is False


def test_a_cursor_made_before_the_codes_were_kept_learns_of_a_removal_after_its_next_pull(c):
    """Resting on the reference data of the policy in force, such a cursor's device holds its categories."""
    phone = login(c, "worker-a1", device="phone-1")
    _, cursor, _ = pull_all(c, phone)
    _, cursor, _ = pull_all(c, phone, _recode(cursor, c=_DROP))
    c.app.state.policy = _without(c.app.state.policy)
    changes, _, _ = pull_all(c, phone, cursor)
    assert _categories(changes)[GONE] is False


@pytest.mark.parametrize("codes", ["lpg_misuse", [1, 2], ["x" * 65]])
def test_a_cursor_with_garbled_codes_is_a_410(c, codes):
    phone = login(c, "worker-a1", device="phone-1")
    _, cursor, _ = pull_all(c, phone)
    r = c.get("/api/v1/sync/pull", params={"cursor": _recode(cursor, c=codes)}, headers=phone)
    assert r.status_code == 410, r.text
