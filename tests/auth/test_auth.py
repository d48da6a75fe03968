from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import select

from app.auth.models import AuthToken, User
from app.db import utcnow
from tests.conftest import login
from tests.helpers import statements_on


def test_login_me_and_device_binding(client):
    r = client.post("/api/v1/auth/token", data={"username": "worker-a1", "password": "firegrid-demo",
                                                "device_id": "phone-1", "device_name": "红米 9A"})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0 and len(body["access_token"]) >= 40
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["username"] == "worker-a1"
    assert me.json()["role"] == "grid_worker"
    assert me.json()["device_id"] == body["device_id"]
    # same phone logging in again reuses its device record
    again = client.post("/api/v1/auth/token", data={"username": "worker-a1", "password": "firegrid-demo",
                                                    "device_id": "phone-1"})
    assert again.json()["device_id"] == body["device_id"]


def test_token_is_stored_hashed(client, session):
    r = client.post("/api/v1/auth/token", data={"username": "office-a", "password": "firegrid-demo"})
    token = r.json()["access_token"]
    stored = session.exec(select(AuthToken.token_hash)).all()
    assert stored and token not in stored


def test_wrong_password_and_unknown_user_are_the_same_401(client):
    a = client.post("/api/v1/auth/token", data={"username": "worker-a1", "password": "wrong-password"})
    b = client.post("/api/v1/auth/token", data={"username": "nobody", "password": "wrong-password"})
    assert a.status_code == b.status_code == 401
    assert a.json()["error"]["code"] == b.json()["error"]["code"] == "bad_credentials"


def test_missing_or_bad_token_is_401(client):
    assert client.get("/api/v1/me").status_code == 401
    r = client.get("/api/v1/me", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_login_rate_limited_per_user(client):
    for _ in range(5):
        assert client.post("/api/v1/auth/token", data={"username": "office-b", "password": "nope-nope"}).status_code == 401
    r = client.post("/api/v1/auth/token", data={"username": "office-b", "password": "firegrid-demo"})
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert "Retry-After" in r.headers
    # another user from the same address is not locked out by it
    assert client.post("/api/v1/auth/token", data={"username": "office-a", "password": "firegrid-demo"}).status_code == 200


def test_login_rate_limited_per_address(client, settings):
    settings.login_max_failures_per_address = 3
    for name in ("u1", "u2", "u3"):
        client.post("/api/v1/auth/token", data={"username": name, "password": "nope-nope"})
    r = client.post("/api/v1/auth/token", data={"username": "police-a", "password": "firegrid-demo"})
    assert r.status_code == 429 and "address" in r.json()["error"]["message"]


def test_logout_ends_token_at_once(client):
    h = login(client, "worker-a2")
    assert client.get("/api/v1/me", headers=h).status_code == 200
    assert client.post("/api/v1/auth/logout", headers=h).status_code == 204
    assert client.get("/api/v1/me", headers=h).status_code == 401


def test_device_revocation_ends_its_tokens_and_blocks_relogin(client):
    worker = login(client, "worker-a1", device="lost-phone")
    other = login(client, "worker-a1", device="new-phone")
    device_id = client.get("/api/v1/me", headers=worker).json()["device_id"]
    office = login(client, "office-a")
    r = client.post(f"/api/v1/devices/{device_id}/revoke", headers=office)
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert client.get("/api/v1/me", headers=worker).status_code == 401
    assert client.get("/api/v1/me", headers=other).status_code == 200  # other phone unaffected
    again = client.post("/api/v1/auth/token", data={"username": "worker-a1", "password": "firegrid-demo",
                                                    "device_id": "lost-phone"})
    assert again.status_code == 403 and again.json()["error"]["code"] == "device_revoked"


def test_office_of_other_town_cannot_revoke_device(client):
    worker = login(client, "worker-a1", device="p")
    device_id = client.get("/api/v1/me", headers=worker).json()["device_id"]
    assert client.post(f"/api/v1/devices/{device_id}/revoke", headers=login(client, "office-b")).status_code == 404
    assert client.post(f"/api/v1/devices/{device_id}/revoke", headers=login(client, "worker-a2")).status_code == 403
    assert client.get("/api/v1/me", headers=worker).status_code == 200


def test_user_deactivation_ends_tokens(client, session):
    worker = login(client, "worker-b1")
    uid = client.get("/api/v1/me", headers=worker).json()["id"]
    assert client.post(f"/api/v1/users/{uid}/deactivate", headers=login(client, "office-b")).status_code == 403
    assert client.post(f"/api/v1/users/{uid}/deactivate", headers=login(client, "admin")).status_code == 200
    assert client.get("/api/v1/me", headers=worker).status_code == 401
    r = client.post("/api/v1/auth/token", data={"username": "worker-b1", "password": "firegrid-demo"})
    assert r.status_code == 401


def test_expired_token_is_401(client, session):
    h = login(client, "police-a")
    session.execute(sa.update(AuthToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    session.flush()
    r = client.get("/api/v1/me", headers=h)
    assert r.status_code == 401


def test_admin_creates_user_and_only_admin(client, units):
    body = {"username": "worker-a9", "password": "a-long-password", "role": "grid_worker",
            "org_unit_id": units["grid-a-1-2"].id}
    assert client.post("/api/v1/users", json=body, headers=login(client, "office-a")).status_code == 403
    r = client.post("/api/v1/users", json=body, headers=login(client, "admin"))
    assert r.status_code == 201 and r.json()["role"] == "grid_worker"
    assert client.post("/api/v1/auth/token", data={"username": "worker-a9", "password": "a-long-password"}).status_code == 200
    dup = client.post("/api/v1/users", json=body, headers=login(client, "admin"))
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "username_taken"


def test_user_must_belong_to_unit_of_its_role(client, units):
    body = {"username": "wrong-unit", "password": "a-long-password", "role": "police_station",
            "org_unit_id": units["office-a"].id}
    r = client.post("/api/v1/users", json=body, headers=login(client, "admin"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_unit"


def test_password_is_argon2(session):
    user = session.exec(select(User).where(User.username == "admin")).one()
    assert user.password_hash.startswith("$argon2")


def test_a_token_and_the_scope_it_grants_take_one_statement(client, db, settings):
    """The user's unit comes with the token row, so a request's scope costs no statement of its own
    (bench/instructions.py); a unit that is not the user's is not trusted."""
    from app.auth.scope import scope_for
    from app.auth.service import authenticate
    from app.org.models import OrgUnit

    token = login(client, "worker-a1")["Authorization"].removeprefix("Bearer ")
    with db.session() as s, statements_on(s.connection()) as statements:
        user, _, _, unit = authenticate(s, settings, token)
        scope = scope_for(s, user, unit)
        assert len(statements) == 1 and unit.id == user.org_unit_id
        other = s.exec(select(OrgUnit).where(OrgUnit.id != user.org_unit_id)).first()
        s.expunge(unit)  # not in the identity map any more: using `other` would go unnoticed otherwise
        assert scope_for(s, user, other) == scope
        assert len(statements) == 3  # `other`, then the user's own unit loaded again
