"""Review: the pull cursor keeps the category codes a phone was sent, and refuses (410) a cursor holding a
code longer than 64 characters. The policy must not be able to name such a category: the cursor the server
made would be refused on the next pull, every pull, and the phone would start over for ever (nor could a
hazard's category column, 64 characters, hold the code)."""

import pytest

from app.referrals.policy import PolicyError, load_policy
from tests.conftest import login

LONG = "c" + "x" * 64  # 65 characters, a valid code otherwise


def _with_long_code():
    raw = load_policy().model_dump(mode="json", exclude_defaults=False)
    raw["categories"] = [*raw["categories"], {"code": LONG, "name_zh": "长", "name_en": "Long"}]
    return raw


def test_a_category_code_longer_than_a_cursor_and_a_hazard_hold_is_refused_when_the_policy_loads():
    from app.referrals.policy import Policy

    with pytest.raises((PolicyError, ValueError)) as exc:
        Policy.model_validate(_with_long_code())
    assert "code" in str(exc.value)


def test_a_phone_pulls_again_with_the_cursor_it_was_given(client):
    """The cursor of a complete pull is served on the next pull (with the policy in force)."""
    phone = login(client, "worker-a1", device="phone-1")
    r = client.get("/api/v1/sync/pull", headers=phone)
    assert r.status_code == 200
    cursor = r.json()["cursor"]
    while r.json()["more"]:
        r = client.get("/api/v1/sync/pull", params={"cursor": r.json()["cursor"]}, headers=phone)
        cursor = r.json()["cursor"]
    assert client.get("/api/v1/sync/pull", params={"cursor": cursor}, headers=phone).status_code == 200
