"""HEAD wherever GET is (RFC 9110 §9.3.2): answered as the GET is, auth and scope checks included, without
the body (app.main.HeadAsGet). It was a 405 on every API route but the photos'."""

import asyncio
import re

from fastapi.routing import APIRoute
from sqlmodel import select

from app.auth.models import Device
from tests.conftest import login
from tests.helpers import place_of, report

QUEUE = "/api/v1/queue"


def sent_by_app(app, method: str, path: str, headers: dict) -> tuple[int, bytes]:
    """(status, body) as the app itself sends them: the test client, like uvicorn, drops a HEAD's body."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_head_of_the_queue_answers_as_its_get_without_the_body(client):
    worker = login(client, "worker-a1")
    got, head = client.get(QUEUE, headers=worker), client.head(QUEUE, headers=worker)
    assert (got.status_code, head.status_code) == (200, 200), head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
    assert sent_by_app(client.app, "HEAD", QUEUE, worker) == (200, b"")
    assert sent_by_app(client.app, "GET", QUEUE, worker) == (200, got.content)


def test_head_without_a_token_is_the_gets_401(client):
    r = client.head(QUEUE)
    assert r.status_code == 401 and r.content == b""
    assert r.headers["www-authenticate"] == "Bearer"


def test_head_of_a_hazard_outside_ones_jurisdiction_is_a_404(clocked_client, session, units, clock):
    client = clocked_client
    place = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(client, login(client, "worker-a1"), place.id, clock.now)["hazard_id"]
    path = f"/api/v1/hazards/{hid}"
    office_a, office_b = login(client, "office-a"), login(client, "office-b")
    assert client.head(path, headers=office_a).status_code == 200
    r = client.head(path, headers=office_b)
    assert (r.status_code, r.content) == (404, b"")
    assert client.get(path, headers=office_b).status_code == 404


def test_every_get_route_answers_head_as_its_get(client):
    """No route is left out: HEAD's status is GET's on each (without a token: 401, or what a public one says)."""
    routes = [r for r in client.app.state.api_routes if isinstance(r, APIRoute) and "GET" in r.methods]
    assert len(routes) > 10
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code != 405, (path, head.status_code, got.status_code)


def test_head_stays_out_of_the_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "get" in paths[QUEUE]
    assert [p for p, item in paths.items() if "head" in item] == []


def test_a_405_on_a_get_route_lists_head_too(client):
    r = client.delete(QUEUE, headers=login(client, "admin"))
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert "HEAD" in r.json()["error"]["message"]
    r = client.post("/healthz")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_head_where_no_route_takes_get_is_still_a_405(client):
    r = client.head("/api/v1/sync/push", headers=login(client, "worker-a1"))
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_a_photos_own_head_route_still_answers(client):
    r = client.head("/api/v1/blobs/" + "a" * 64, headers=login(client, "office-a"))
    assert r.status_code == 404 and r.content == b""


def test_head_of_the_pull_is_not_recorded_as_the_phone_syncing(client, session):
    """(Failed before its fix, a review.) HeadAsGet runs the whole GET of /sync/pull, its BackgroundTask too: a HEAD records last_pull_at (and
    last_seen_at), so GET /devices/health shows the phone synced (`stale` false, `days_since_sync` 0) though
    it received no change at all. A connectivity probe or monitor doing HEAD would hide a phone that has not
    synced for weeks from the office's stale-phones list. Fix: skip _record_pull when the request was a HEAD
    (mark the rewritten scope, e.g. scope["head_as_get"] = True, and check it in the pull route)."""
    worker = login(client, "worker-a1", device="head-probe-phone")
    r = client.head("/api/v1/sync/pull", headers=worker)
    assert r.status_code == 200
    session.expire_all()
    device = session.exec(select(Device).where(Device.device_key == "head-probe-phone")).one()
    assert device.last_pull_at is None
    [row] = [d for d in client.get("/api/v1/devices/health", headers=login(client, "office-a")).json()
             if d["device_id"] == device.id]
    assert row["last_sync_at"] is None and row["stale"] is True, row
