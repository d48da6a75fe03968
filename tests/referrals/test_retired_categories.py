"""GET /api/v1/categories/retired: the labels of categories the policy retired, for the hazards filed under
them; GET /api/v1/categories keeps its shape and lists the current ones only."""

from tests.conftest import login
from tests.sync.test_reference_removed import GONE, _without


def test_retired_categories_are_listed_apart_with_their_labels(client):
    current = client.app.state.policy
    [gone] = [c for c in current.categories if c.code == GONE]
    client.app.state.policy = _without(current, retire=True)
    h = login(client, "worker-a1")
    r = client.get("/api/v1/categories/retired", headers=h)
    assert r.status_code == 200, r.text
    assert r.json() == [{"code": GONE, "name_zh": gone.name_zh, "name_en": gone.name_en,
                         "default_rectify_workdays": client.app.state.policy.rectify_days(GONE), "retired": True,
                         "policy_version": client.app.state.policy.version}]
    cats = client.get("/api/v1/categories", headers=h).json()
    assert GONE not in {c["code"] for c in cats}
    assert all(set(c) == {"code", "name_zh", "name_en", "default_rectify_workdays"} for c in cats)


def test_no_retired_category_is_an_empty_list_and_it_needs_a_login(client):
    assert client.get("/api/v1/categories/retired", headers=login(client, "office-a")).json() == []
    assert client.get("/api/v1/categories/retired").status_code == 401
