"""What a fuzzing review (schemathesis and hand-made input against a running server, both backends) found
that the other tests did not: opaque cursors carrying text the database cannot take, NULs in a desk
action's text, and the PWA's static files answering for API paths."""

import base64
import json

import pytest

from tests.conftest import login
from tests.helpers import place_of, report
from tests.sync.test_pull import get_page

from datetime import datetime, timezone

SURROGATE = "\ud800"


def _b64(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize("cursor", [
    _b64(["2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00", SURROGATE]),
    _b64(["2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00", "a\x00b"]),
    _b64(["2026-01-01T00:00:00+00:00", None, 12]),  # an id that is not text
    base64.urlsafe_b64encode(b"[" * 2000).decode(),  # deeper than the JSON decoder recurses
    "A" * 5000,
])
def test_a_forged_queue_cursor_is_a_422_naming_it(client, cursor):
    for who in ("office-a", "worker-a1"):
        r = client.get("/api/v1/queue", params={"cursor": cursor}, headers=login(client, who, device="desk"))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "bad_cursor" and r.json()["error"]["field"] == "cursor"


@pytest.mark.parametrize("values", [[SURROGATE, "x"], ["x", "a\x00"], ["x", 1]])
def test_a_forged_places_cursor_is_a_422_naming_it(client, values):
    r = client.get("/api/v1/places", params={"cursor": _b64(values)}, headers=login(client, "worker-a1"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "bad_cursor"


def _decode_pull(cursor: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def _encode_pull(d: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")


@pytest.mark.parametrize("phase", ["place", "hazard", "inspection"])
@pytest.mark.parametrize("key", [SURROGATE, "a\x00"])
def test_a_forged_pull_position_is_a_410_so_the_phone_starts_over(client, phase, key):
    w = login(client, "worker-a1")
    page = get_page(client, w, limit=1)
    forged = {**_decode_pull(page["cursor"]), "m": "s", "p": phase, "k": key}
    forged["u"] = forged.get("u") or forged["a"]
    assert get_page(client, w, _encode_pull(forged), status=410)["error"]["code"] == "cursor_expired"
    codes = {**_decode_pull(page["cursor"]), "c": [SURROGATE]}
    assert get_page(client, w, _encode_pull(codes), status=410)["error"]["code"] == "cursor_expired"


@pytest.mark.parametrize(("action", "field"), [
    ({"action": "dismiss"}, "reason"), ({"action": "escalate"}, "reason"), ({"action": "transfer"}, "to_unit_id"),
    ({"action": "merge"}, "merge_into_id"), ({"action": "order_rectification"}, "note"),
    ({"action": "close"}, "override_reason"),
])
def test_a_nul_in_a_desk_actions_text_is_a_422_naming_the_field(client, session, units, action, field):
    place = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(client, login(client, "worker-a1"), place.id, datetime(2026, 3, 2, tzinfo=timezone.utc))["hazard_id"]
    office = login(client, "office-a", device="desk")
    r = client.post(f"/api/v1/hazards/{hid}/actions", json={**action, field: "坏\x00了"}, headers=office)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"].endswith(field), r.json()
    assert client.get(f"/api/v1/hazards/{hid}", headers=office).json()["status"] == "referred"


def test_api_paths_are_the_apis_not_the_static_files(client):
    admin = login(client, "admin", device="desk")
    r = client.delete("/api/v1/places", headers=admin)
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert set(r.headers["allow"].split(", ")) >= {"GET", "POST"}  # both routes on the path
    r = client.get("/api/v1/sync/push", headers=admin)
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
    assert "POST" in r.headers["allow"]
    r = client.get("/api/v1/no-such-thing", headers=admin)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    assert client.get("/").status_code == 200 and "Firegrid" in client.get("/").text  # the PWA, as before
    r = client.post("/healthz")  # a route outside the API's routers: Starlette's own Allow
    assert r.status_code == 405 and "GET" in r.headers["allow"] and "GET" in r.json()["error"]["message"]
