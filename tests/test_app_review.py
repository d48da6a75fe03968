"""Error handling of the whole app, from an adversarial review (2026-12-01): input that reached the database
as a 500."""

import pytest

from tests.conftest import login


@pytest.mark.parametrize("path,params,field", [
    ("/api/v1/queue", {"status": "referred\u0000"}, "query.status"),  # bound as a literal: broke the SQL itself
    ("/api/v1/queue", {"place_class": "rental\u0000"}, "query.place_class"),
    ("/api/v1/places", {"q": "书店\u0000"}, "query.q"),
    ("/api/v1/places", {"grid_id": "\u0000"}, "query.grid_id"),
])
def test_a_nul_in_a_query_parameter_is_a_422_naming_it_on_either_backend(client, path, params, field):
    """GET /queue?status=x%00 was a 500 on both backends (SQLite: "the query contains a null character";
    PostgreSQL: "unterminated quoted string"); a NUL in another filter a 500 or a nameless 422 on PostgreSQL
    and a lookup of it on SQLite."""
    r = client.get(path, params=params, headers=login(client, "office-a"))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error" and [f["field"] for f in error["fields"]] == [field]


def test_a_query_without_a_nul_is_untouched(client):
    headers = login(client, "office-a")
    assert client.get("/api/v1/queue", params={"status": "referred"}, headers=headers).status_code == 200
    assert client.get("/api/v1/places", params={"q": "100%0"}, headers=headers).status_code == 200


def test_a_pull_cursor_with_a_nul_is_still_one_the_server_cannot_serve(client):
    """The contract: a cursor the server can no longer serve is a 410 and the phone starts over."""
    r = client.get("/api/v1/sync/pull", params={"cursor": "ab\u0000c"}, headers=login(client, "worker-a1"))
    assert r.status_code == 410, r.text


@pytest.mark.parametrize("body,words", [
    (b'{"name": "caf\xe9"}', "UTF-8"),  # Latin-1, not UTF-8
    (b"[" * 100_000, "nested"),
    (b'{"lat": 1' + b"0" * 5000 + b"}", "integer"),
])
def test_a_body_that_cannot_be_read_says_why(client, units, body, words):
    """FastAPI answered these with a bare "There was an error parsing the body" (code http_error)."""
    r = client.post("/api/v1/places", content=body, headers={**login(client, "worker-a1"),
                                                             "content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_body" and words in error["message"], error
