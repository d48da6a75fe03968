"""Refusals of auth input name the field at fault (`error.field`), as the API's other 4xx answers do: a client
(the PWA's admin form, a script) marks the field without parsing the message."""

import pytest
from app.auth import service
from app.auth.models import Role
from app.demo import DEMO_PASSWORD
from app.errors import Invalid
from tests.auth.test_passwords import change, reset_url, user_id
from tests.conftest import login

USERS = "/api/v1/users"


def error_of(r, status: int, code: str) -> dict:
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    return r.json()["error"]


def new_user(units, **kw) -> dict:
    return {"username": "worker-a9", "password": "a-long-password", "role": "grid_worker",
            "org_unit_id": units["grid-a-1-2"].id, **kw}


def test_a_unit_of_the_wrong_kind_names_org_unit_id(client, units):
    r = client.post(USERS, json=new_user(units, role="police_station", org_unit_id=units["office-a"].id),
                    headers=login(client, "admin"))
    assert error_of(r, 422, "bad_unit")["field"] == "org_unit_id"


def test_an_unknown_unit_names_org_unit_id(client, units):
    r = client.post(USERS, json=new_user(units, org_unit_id="no-such-unit"), headers=login(client, "admin"))
    assert error_of(r, 404, "not_found")["field"] == "org_unit_id"


def test_a_bad_username_names_username(session, units):
    """The API's schema refuses such a name first; the service's own check serves `firegrid user create`."""
    with pytest.raises(Invalid) as caught:
        service.create_user(session, username="no spaces", password="a-long-password", role=Role.grid_worker,
                            unit=units["grid-a-1-2"])
    assert (caught.value.code, caught.value.extra.get("field")) == ("bad_username", "username")


def test_a_taken_username_names_username(client, units):
    r = client.post(USERS, json=new_user(units, username="WORKER-A1"), headers=login(client, "admin"))
    assert error_of(r, 409, "username_taken")["field"] == "username"


def test_a_new_accounts_weak_password_names_password(client, units):
    """Long enough for the schema, yet mostly spaces: the service's rule refuses it."""
    r = client.post(USERS, json=new_user(units, password=" " * 12 + "abc"), headers=login(client, "admin"))
    assert error_of(r, 422, "weak_password")["field"] == "password"


@pytest.mark.parametrize("password, code", [("short-7", "weak_password"), ("p" * 201, "password_too_long")])
def test_a_refused_new_password_names_new_password(client, session, password, code):
    admin = login(client, "admin")
    r = client.post(reset_url(user_id(session, "worker-a2")), json={"new_password": password}, headers=admin)
    assert error_of(r, 422, code)["field"] == "new_password"
    r = change(client, login(client, "worker-a1"), new=password)
    assert error_of(r, 422, code)["field"] == "new_password"


def test_a_password_change_names_the_password_at_fault(client):
    phone = login(client, "worker-a1")
    assert error_of(change(client, phone, new=DEMO_PASSWORD), 422, "same_password")["field"] == "new_password"
    r = change(client, phone, current="not-the-password")
    assert error_of(r, 403, "wrong_password")["field"] == "current_password"


def test_a_login_from_a_revoked_device_names_device_id(client):
    phone = login(client, "worker-a1", device="lost-phone")
    device_id = client.get("/api/v1/me", headers=phone).json()["device_id"]
    assert client.post(f"/api/v1/devices/{device_id}/revoke", headers=login(client, "office-a")).status_code == 200
    r = client.post("/api/v1/auth/token", data={"username": "worker-a1", "password": DEMO_PASSWORD,
                                                "device_id": "lost-phone"})
    assert error_of(r, 403, "device_revoked")["field"] == "device_id"


def test_a_wrong_login_names_no_field(client):
    """Which of the two was wrong is not told: that would say which usernames exist."""
    r = client.post("/api/v1/auth/token", data={"username": "worker-a1", "password": "not-the-password"})
    assert "field" not in error_of(r, 401, "bad_credentials")
