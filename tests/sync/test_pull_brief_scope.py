"""A review of "no one sees or changes what lies outside their jurisdiction" after the pull began to carry premises
briefs: the test here failed before its fix (a brief showed where a premises had gone after it left the caller's town)."""

from __future__ import annotations

import pytest

from tests.auth.test_scope_changes import report
from tests.conftest import login
from tests.helpers import place_of
from tests.sync.test_pull import pull_all



@pytest.mark.parametrize("user", ["worker-a1", "office-a", "police-a"])
def test_pull_brief_does_not_reveal_premises_now_in_another_town(client, session, units, user):
    """A hazard the caller used to see (premises since moved to town B, renamed, new address): a pull from a
    cursor taken before the report still serves the old hazard row (and the `moved` tombstone), but the brief
    attached to it is read *now*, so the caller learns the name and address of premises that lie in another
    town and that GET /places/{id} answers 404 for."""
    c = client
    h = login(c, user, device="desk-or-phone")
    _, cursor, _ = pull_all(c, h, limit=1000)
    admin = login(c, "admin")
    place = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(c, admin, place.id)
    r = c.patch(f"/api/v1/places/{place.id}", headers=admin,
                json={"grid_id": units["grid-b-1-1"].id, "name": "乙镇秘密仓库", "address": "临江街道保密路99号"})
    assert r.status_code == 200, r.text
    assert c.get(f"/api/v1/places/{place.id}", headers=h).status_code == 404
    assert c.get(f"/api/v1/hazards/{hid}", headers=h).status_code == 404
    changes, _, _ = pull_all(c, h, cursor, limit=1000)
    leaked = [ch["data"]["place"] for ch in changes
              if ch["id"] == hid and not ch["deleted"] and "place" in (ch["data"] or {})]
    assert not any(b["address"] == "临江街道保密路99号" or b["name"] == "乙镇秘密仓库" for b in leaked), leaked
