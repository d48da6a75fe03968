"""Review: a login whose password was verified just before the password changed must not end with a token.

A login checks the password on a read transaction and issues the token on a later write one. A change
(POST /me/password) or an admin's reset that commits in between revokes every token the user has, but the
token the login issues afterwards was made from the old password and outlived the change: a phone lost
with the old password written down, or the one whose theft prompted the change, kept a session."""

from sqlmodel import func, select

from app.auth import service
from app.auth.models import AuthToken, User
from app.db import utcnow
from app.demo import DEMO_PASSWORD
from tests.auth.test_login_followups import attempt
from tests.auth.test_passwords import NEW
from tests.conftest import login


def _live_tokens(db, username: str) -> int:
    with db.session() as s:
        return s.exec(select(func.count()).select_from(AuthToken).join(User, User.id == AuthToken.user_id)
                      .where(User.username == username, AuthToken.revoked_at.is_(None))).one()


def test_a_login_verified_before_an_admin_reset_gets_no_token(client, db, monkeypatch):
    real = service.verify_password
    new_hash = service.hash_password(NEW)

    def verify_while_the_admin_resets(stored_hash, password):
        ok = real(stored_hash, password)  # the old password, right as the request read it
        with db.session(write=True) as s:
            uid = s.exec(select(User.id).where(User.username == "worker-a1")).one()
            service.reset_password(s, user_id=uid, new_hash=new_hash, now=utcnow())
            s.commit()
        return ok

    monkeypatch.setattr(service, "verify_password", verify_while_the_admin_resets)
    r = attempt(client, "worker-a1", DEMO_PASSWORD)
    monkeypatch.setattr(service, "verify_password", real)
    assert r.status_code == 401 and r.json()["error"]["code"] == "bad_credentials", r.text
    assert _live_tokens(db, "worker-a1") == 0
    login(client, "worker-a1", device="phone", password=NEW)  # the new password works


def test_a_login_verified_before_the_users_own_change_gets_no_token(client, db, monkeypatch):
    phone = login(client, "worker-a1", device="phone")
    real = service.verify_password

    def verify_while_the_owner_changes(stored_hash, password):
        ok = real(stored_hash, password)
        monkeypatch.setattr(service, "verify_password", real)
        r = client.post("/api/v1/me/password", json={"current_password": DEMO_PASSWORD, "new_password": NEW},
                        headers=phone)
        assert r.status_code == 204, r.text
        return ok

    monkeypatch.setattr(service, "verify_password", verify_while_the_owner_changes)
    r = client.post("/api/v1/auth/token", data={"username": "worker-a1", "password": DEMO_PASSWORD,
                                                "device_id": "stolen-phone"})  # with the old password
    assert r.status_code == 401, r.text
    assert _live_tokens(db, "worker-a1") == 1  # the owner's phone only
