"""What a second API-wide fuzzing found (schemathesis against a served app on SQLite and PostgreSQL, run from a
throwaway venv, plus input made by hand), beyond tests/test_fuzz_findings.py. Each test failed on the code
before its fix: a 500 for a lone surrogate in an action's photo names or a new password, a character offset
named as the field of a body that is not JSON, and numbers taken as times."""

from datetime import datetime, timezone

import pytest

from app.demo import DEMO_PASSWORD
from tests.conftest import login
from tests.helpers import place_of, report

# A JSON body as a phone or a script may send it: JSON.stringify of a text cut in the middle of an emoji
# writes the lone surrogate as this escape. Python's json module (what FastAPI parses bodies with) reads it
# into a str that no UTF-8 encoder can encode; pydantic lets it through a str field that has no constraint.
LONE = "\\ud800"


def _json(client, method, url, raw: str, headers):
    return client.request(method, url, content=raw.encode(), headers={**headers, "content-type": "application/json"})


def _assert_422_naming(r, field: str):
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    named = [f["field"] for f in error.get("fields", [])] + [error.get("field") or ""]
    assert any(n == field or n.startswith(field + ".") for n in named), error


def test_a_lone_surrogate_in_an_actions_photo_is_a_422_and_nothing_changes(client, session, units):
    """POST /hazards/{id}/actions with photos ["\\ud800"]: ActionRequest.photos is list[str] with no check
    before the action runs; the name reaches Hazard.photos (a JSON column) and orjson refuses it at the flush:
    500 internal_error (app/hazards/router.py:64, app/db.py:191). A NUL or a bad name is a 422
    invalid_sha256 already: only the order is wrong (the names are checked after act())."""
    place = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(client, login(client, "worker-a1"), place.id, datetime(2026, 3, 2, tzinfo=timezone.utc))["hazard_id"]
    office = login(client, "office-a", device="desk")
    r = _json(client, "POST", f"/api/v1/hazards/{hid}/actions", f'{{"action": "accept", "photos": ["{LONE}"]}}', office)
    _assert_422_naming(r, "photos")
    after = client.get(f"/api/v1/hazards/{hid}", headers=office).json()
    assert after["status"] == "referred" and after["photos"] == ["a" * 64]


def test_a_lone_surrogate_in_my_new_password_is_a_422_and_the_old_one_still_works(client):
    """POST /me/password {"new_password": "ab\\ud800…"}: PasswordChange.new_password is a bare str; argon2 encodes it
    to UTF-8 and raises UnicodeEncodeError: 500 (app/auth/router.py:89 -> app/auth/service.py hash_password), after
    the attempt was counted as a failed login."""
    me = login(client, "worker-a2", device="phone")
    r = _json(client, "POST", "/api/v1/me/password",
              f'{{"current_password": "{DEMO_PASSWORD}", "new_password": "abcdefgh{LONE}12345"}}', me)
    _assert_422_naming(r, "new_password")
    login(client, "worker-a2", device="other")  # the password is as it was


def test_a_lone_surrogate_in_a_password_the_admin_sets_is_a_422(client, session):
    """POST /users/{id}/password {"new_password": "…\\ud800…"}: the same bare str, hashed: 500
    (app/auth/router.py:167)."""
    from app.auth.service import find_user

    target = find_user(session, "worker-b1")
    admin = login(client, "admin", device="desk")
    r = _json(client, "POST", f"/api/v1/users/{target.id}/password", f'{{"new_password": "abcdefgh{LONE}12345"}}', admin)
    _assert_422_naming(r, "new_password")
    login(client, "worker-b1", device="phone")  # tokens and password untouched


@pytest.mark.parametrize(("method", "path", "raw"), [
    ("POST", "/api/v1/places", '{"name": '),              # cut short (a dropped connection, a short Content-Length)
    ("POST", "/api/v1/places", '{"name": "x",}'),         # a trailing comma
    ("PUT", "/api/v1/calendar/overrides", "[{'day': '2030-01-01'}]"),  # single quotes
    ("POST", "/api/v1/blobs/missing", '{"sha256": [}'),
])
def test_a_body_that_is_not_json_names_the_body_not_a_character_offset(client, method, path, raw):
    """A body FastAPI cannot parse as JSON was 422 validation_error with field "9" (or "13", "1", …) and the
    message "9: JSON decode error": the "field" is the character offset where json.loads gave up, and the reason
    (ctx.error, e.g. "Expecting value") is dropped (app/errors.py:_field_name / validation_error). The push
    answers the same mistake with field "body" and the parser's reason; README: a body that cannot be read is
    400 bad_body saying why."""
    r = _json(client, method, path, raw, login(client, "admin", device="desk"))
    assert r.status_code in (400, 422), r.text
    error = r.json()["error"]
    fields = [f["field"] for f in error.get("fields", [])] + ([error["field"]] if error.get("field") else [])
    assert not any(f.isdigit() for f in fields), error
    assert error["code"] == "bad_body" or fields == ["body"], error
    assert "JSON" in error["message"] and error["message"] != f"{fields[0] if fields else ''}: JSON decode error", error


@pytest.mark.parametrize("found_at", [0, 1700000000])
def test_a_number_is_not_a_device_time(client, session, units, found_at):
    """API.md: times are ISO-8601 with their offset. pydantic's lax mode takes a JSON number as Unix seconds in
    UTC, so a phone's unset time (0) files a hazard found on 1970-01-01 (applied, 2xx), and a number in
    milliseconds or seconds is silently guessed at (app/sync/schemas.py DeviceTime). Schemathesis: ST201 on
    sent_at; the same holds for found_at, started_at, at."""
    from tests.helpers import hazard_data, op, push

    place = place_of(session, units, "grid-a-1-1", "rental")
    data = {**hazard_data(place.id, datetime(2026, 3, 2, tzinfo=timezone.utc)), "found_at": found_at}
    [res] = push(client, login(client, "worker-a1"), op("hazard.report", data))
    assert res["status"] == "rejected", res
    assert res["error"]["field"] == "data.found_at", res


def test_a_number_is_not_a_figures_period(client):
    """GET /figures?to=0.5 was a 200 about 1969-01-01T00:00:00.5Z to 1970-01-01T00:00:00.5Z: a number taken as Unix
    seconds (app/hazards/router.py:86, no strict parse), and the default `from` then lies below the 1970 bound that
    parse_period enforces on a given one (app/hazards/service.py:parse_period)."""
    r = client.get("/api/v1/figures", params={"to": "0.5"}, headers=login(client, "office-a"))
    _assert_422_naming(r, "query.to")
