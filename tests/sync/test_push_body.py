"""The push's body: read only after the token is checked, bounded in size, parsed with errors that name
the field, and documented in the OpenAPI schema although FastAPI does not parse it."""

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlmodel import func, select

from app.hazards.models import Hazard
from app.main import create_app
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push

CN = timezone(timedelta(hours=8))
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=CN)
PUSH = "/api/v1/sync/push"


@pytest.fixture
def place(session, units):
    return place_of(session, units, "grid-a-1-1", "rental")


def hazards(session) -> int:
    return session.exec(select(func.count()).select_from(Hazard)).one()


@pytest.mark.parametrize("body", [b"", b"\x00\xff not json {", b'{"ops": "not a list"}', b"[]"])
def test_a_stranger_gets_401_whatever_the_body(client, body):
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        r = client.post(PUSH, content=body, headers={"Content-Type": "application/json", **headers})
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("body,field", [
    (b"\x00\xff not json {", "body"),
    (b"", "body"),
    (b'{"ops": "not a list"}', "ops"),
    (b'{"device_id": "x"}', "ops"),
    (b'{"ops": [], "app_version": 5}', "app_version"),  # an op without an op_id is rejected alone (test_op_id_rejection)
    (b'{"ops": [], "sent_at": "yesterday"}', "sent_at"),
])
def test_a_malformed_body_is_422_naming_what_is_wrong(client, body, field):
    worker = login(client, "worker-a1")
    r = client.post(PUSH, content=body, headers={**worker, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert [f["field"] for f in err["fields"]] == [field], err
    assert err["message"].startswith(f"{field}: ")


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_a_push_that_is_not_sent_as_json_is_422(client, content_type):
    """As FastAPI holds a declared JSON body to its Content-Type: the body is not even read."""
    worker = login(client, "worker-a1")
    headers = {**worker, **({"Content-Type": content_type} if content_type else {})}
    r = client.post(PUSH, content=b'{"ops": []}', headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"] == [{"field": "body", "message": "send the push as JSON (Content-Type: "
                                                                        "application/json)"}]
    for ok in ("application/json; charset=utf-8", "application/vnd.firegrid+json"):
        r = client.post(PUSH, content=b'{"ops": []}', headers={**worker, "Content-Type": ok})
        assert r.status_code == 200 and r.json()["results"] == [], r.text


def test_a_phone_that_drops_mid_push_gets_a_quiet_400_and_nothing_applies(client, session, caplog):
    """On a weak link the connection goes mid-body: no 500, no stack trace in the log, nothing stored."""
    token = login(client, "worker-a1")["Authorization"].encode()
    app = client.app
    before = hazards(session)
    sent: list[dict] = []
    body = [{"type": "http.request", "body": b'{"ops": [{"op_id": "a1b2c3d4", "type": "hazard.re', "more_body": True},
            {"type": "http.disconnect"}]

    async def receive():
        return body.pop(0) if body else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": PUSH, "raw_path": PUSH.encode(), "query_string": b"", "root_path": "", "server": ("t", 80),
             "client": ("127.0.0.1", 1), "headers": [(b"authorization", token), (b"content-type", b"application/json")]}
    caplog.set_level("ERROR")
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "client_disconnected"
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
    assert hazards(session) == before


def test_a_push_over_the_size_limit_is_413_naming_the_limit_and_applies_nothing(db, settings, session, place,
                                                                                   clock):
    clock.now = NOW
    small = settings.model_copy(update={"max_push_bytes": 4096})
    with TestClient(create_app(small, db, clock=clock), raise_server_exceptions=False) as c:
        worker = login(c, "worker-a1")
        before = hazards(session)
        ops = [op("hazard.report", hazard_data(place.id, NOW, description="楼道堆放杂物" * 100)) for _ in range(3)]
        r = c.post(PUSH, json={"ops": ops}, headers=worker)
        assert r.status_code == 413, r.text
        assert r.json()["error"] == {"code": "too_large", "max_bytes": 4096,
                                     "message": "the request body is larger than this call's limit of 4096 bytes"}
        # refused on its Content-Length, unread: the connection is not kept for a next request behind it
        assert r.headers["connection"] == "close"

        def chunked():  # no Content-Length: counted as the bytes arrive
            body = r.request.content
            for i in range(0, len(body), 1000):
                yield body[i:i + 1000]

        r = c.post(PUSH, content=chunked(), headers={**worker, "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["max_bytes"] == 4096, r.text
        assert "connection" not in r.headers  # stopped while counting, after the bytes began to arrive
        assert hazards(session) == before
        [result] = push(c, worker, ops[0])  # a batch under the limit goes through
        assert result["status"] == "applied" and hazards(session) == before + 1


def test_a_push_may_be_larger_than_other_bodies(db, settings, session, place, clock):
    """Every other JSON body is bounded by max_request_bytes; a phone's batch by max_push_bytes."""
    clock.now = NOW
    app = create_app(settings.model_copy(update={"max_request_bytes": 4096}), db, clock=clock)
    with TestClient(app, raise_server_exceptions=False) as c:
        worker = login(c, "worker-a1")
        ops = [op("hazard.report", hazard_data(place.id, NOW, description="楼道堆放杂物" * 100)) for _ in range(3)]
        assert [r["status"] for r in push(c, worker, *ops)] == ["applied"] * 3
        r = c.post("/api/v1/blobs/missing", json={"sha256": ["0" * 64] * 100}, headers=worker)
        assert r.status_code == 413 and r.json()["error"]["max_bytes"] == 4096, r.text
        body = r.request.content

        def chunked():  # no Content-Length: stopped inside FastAPI's own read of the body
            for i in range(0, len(body), 1000):
                yield body[i:i + 1000]

        r = c.post("/api/v1/blobs/missing", content=chunked(), headers={**worker, "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == {
            "code": "too_large", "max_bytes": 4096, "message": "the request body is larger than this call's limit of 4096 bytes"}


def test_another_call_with_a_body_over_the_limit_is_413_even_for_a_stranger(db, settings):
    """FastAPI reads a JSON body before any dependency: the limit is what keeps a stranger's huge body
    out of memory."""
    with TestClient(create_app(settings.model_copy(update={"max_request_bytes": 4096}), db),
                    raise_server_exceptions=False) as c:
        r = c.post("/api/v1/places", content=b"{" + b" " * 10_000 + b"}",
                   headers={"Content-Type": "application/json", "Authorization": "Bearer not-a-token"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text


def test_the_push_body_is_documented_from_its_model(client):
    doc = client.get("/openapi.json").json()
    body = doc["paths"][PUSH]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PushRequest"}
    schemas = doc["components"]["schemas"]
    assert schemas["PushRequest"]["properties"]["ops"]["items"] == {"$ref": "#/components/schemas/Op"}
    assert set(schemas["Op"]["required"]) == {"op_id", "type"}
    assert "PushResponse" in schemas  # the generated part is still there
    assert set(doc["paths"][PUSH]["post"]["responses"]) >= {"200", "413", "422"}

    def refs(node):
        if isinstance(node, dict):
            yield from ([node["$ref"]] if isinstance(node.get("$ref"), str) else [])
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    unresolved = {ref for ref in refs(doc) if ref.removeprefix("#/components/schemas/") not in schemas}
    assert unresolved == set()
    assert "$defs" not in json.dumps(doc)
