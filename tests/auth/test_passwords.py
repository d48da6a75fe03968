"""Changing and resetting a password: the user's own change (POST /me/password), the county admin's reset
(POST /users/{id}/password) and the admin's own way back in (`firegrid user set-password`). A change ends
the sessions of every other phone, and guessing the current password with a stolen token is a login
attempt like any other."""

import logging

import pytest
from sqlmodel import Session, func, select

from app.auth import service
from app.auth.models import AuthToken, LoginFailure, User
from app.cli import cli
from app.config import get_settings
from app.db import make_engine, utcnow
from app.demo import DEMO_PASSWORD
from tests.auth.test_auth_review import cli_db  # noqa: F401  (a fixture)
from tests.auth.test_login_followups import attempt, from_address
from tests.conftest import login

ME_PASSWORD = "/api/v1/me/password"
NEW = "a-new-password-9"


def reset_url(user_id: str) -> str:
    return f"/api/v1/users/{user_id}/password"


def user_id(session, username: str) -> str:
    return session.exec(select(User.id).where(User.username == username)).one()


def alive(client, headers) -> bool:
    r = client.get("/api/v1/me", headers=headers)
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


def failures(session, username: str) -> int:
    return session.exec(select(func.count()).select_from(LoginFailure).where(LoginFailure.username == username)).one()


def change(client, headers, current: str = DEMO_PASSWORD, new: str = NEW):
    return client.post(ME_PASSWORD, json={"current_password": current, "new_password": new}, headers=headers)


# -- 1. the user's own change ---------------------------------------------------------------------


def test_changing_ones_password_keeps_this_token_and_ends_every_other(client):
    """Other phones (and another token of this phone) log in again; the phone that asked goes on."""
    phone = login(client, "worker-a1", device="phone")
    older_on_phone = login(client, "worker-a1", device="phone")
    other_phone = login(client, "worker-a1", device="other-phone")
    colleague = login(client, "worker-a2", device="phone")
    r = change(client, phone)
    assert r.status_code == 204, r.text
    assert alive(client, phone)
    assert not alive(client, other_phone) and not alive(client, older_on_phone)
    assert alive(client, colleague)  # nobody else's tokens
    old = attempt(client, "worker-a1", DEMO_PASSWORD)
    assert old.status_code == 401 and old.json()["error"]["code"] == "bad_credentials"
    assert alive(client, login(client, "worker-a1", device="other-phone", password=NEW))


def test_a_wrong_current_password_is_a_403_and_changes_nothing(client):
    phone, other_phone = login(client, "office-a", device="phone"), login(client, "office-a", device="pc")
    r = change(client, phone, current="not-my-password")
    assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_password", r.text
    assert alive(client, phone) and alive(client, other_phone)  # a 403, not a 401: the token is fine
    login(client, "office-a", device="pc2")  # the old password still logs in
    assert attempt(client, "office-a", NEW).status_code == 401


def test_wrong_current_passwords_count_as_failed_logins_up_to_a_429(client, session):
    """A stolen token cannot be used to guess the password at full speed: each wrong current password is
    a failed login for that user and address, and at the login limit even the right one is a 429."""
    thief = login(client, "worker-b1", device="stolen-phone")
    for n in range(1, 6):
        assert change(client, thief, current=f"guess-{n}-xyz").status_code == 403
        assert failures(session, "worker-b1") == n
    r = change(client, thief)  # the right one, too late
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
    assert r.json()["error"]["limit"] == "user_address" and "Retry-After" in r.headers
    assert attempt(client, "worker-b1", DEMO_PASSWORD).status_code == 429  # one count with the login form
    assert alive(client, thief)
    # from another address the user is not locked out (a thief cannot lock them out either)
    assert attempt(from_address(client, "198.51.100.30"), "worker-b1", DEMO_PASSWORD).status_code == 200


def test_failed_logins_count_against_the_current_password_check(client):
    """The other way round: the login form's failures from this address use up the same allowance."""
    phone = login(client, "police-a", device="phone")
    for _ in range(5):
        assert attempt(client, "police-a", "wrong-password").status_code == 401
    assert change(client, phone).status_code == 429


def test_the_attempt_is_on_record_while_the_current_password_is_verified(client, monkeypatch):
    """Counted before argon2 runs (as a login is), and forgiven for this address once it succeeds."""
    phone = login(client, "worker-a2", device="phone")
    real, seen = service.verify_password, []

    def verify(stored_hash, password):
        with client.app.state.db.session() as s:
            seen.append(failures(s, "worker-a2"))
        return real(stored_hash, password)

    monkeypatch.setattr(service, "verify_password", verify)
    assert change(client, phone, current="wrong-one-1").status_code == 403
    assert change(client, phone).status_code == 204
    assert seen == [1, 2]
    with client.app.state.db.session() as s:
        assert failures(s, "worker-a2") == 0


@pytest.mark.parametrize("new, code", [
    ("short-7", "weak_password"),
    (" " * 12 + "abc", "weak_password"),  # spaces are no password
    ("p" * 201, "password_too_long"),  # the login form takes at most 200
    (DEMO_PASSWORD, "same_password"),
])
def test_a_refused_new_password_is_a_422_and_counts_no_attempt(client, session, new, code):
    phone, other_phone = login(client, "worker-a1", device="phone"), login(client, "worker-a1", device="other")
    r = change(client, phone, new=new)
    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    assert failures(session, "worker-a1") == 0
    assert alive(client, other_phone)
    login(client, "worker-a1", device="third")  # unchanged


def test_changing_ones_password_needs_a_token_and_both_fields(client):
    assert client.post(ME_PASSWORD, json={"current_password": DEMO_PASSWORD, "new_password": NEW}).status_code == 401
    phone = login(client, "worker-a1")
    r = client.post(ME_PASSWORD, json={"new_password": NEW}, headers=phone)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


def test_a_token_revoked_meanwhile_cannot_finish_a_change(client, db, session, monkeypatch):
    """The token is read again on the write transaction: a phone revoked while its request was being
    verified does not set the password (nor keep its token alive)."""
    phone = login(client, "worker-a1", device="lost-phone")
    real = service.verify_password

    def verify_then_revoke(stored_hash, password):
        with db.session() as s:
            s.execute(AuthToken.__table__.update().values(revoked_at=utcnow()))
            s.commit()
        return real(stored_hash, password)

    monkeypatch.setattr(service, "verify_password", verify_then_revoke)
    assert change(client, phone).status_code == 401
    monkeypatch.setattr(service, "verify_password", real)
    login(client, "worker-a1", device="new-phone")  # the old password still works


def test_a_password_changed_meanwhile_is_a_409_not_overwritten(client, db, monkeypatch):
    """Two changes sent with one token at once: the second was verified against a password that is no
    longer stored, and does not replace the first's."""
    phone = login(client, "worker-a1", device="phone")
    real = service.verify_password

    def verify_while_another_change_lands(stored_hash, password):
        with db.session() as s:
            s.execute(User.__table__.update().where(User.username == "worker-a1")
                      .values(password_hash=service.hash_password("the-first-change")))
            s.commit()
        return real(stored_hash, password)

    monkeypatch.setattr(service, "verify_password", verify_while_another_change_lands)
    r = change(client, phone)
    assert r.status_code == 409 and r.json()["error"]["code"] == "password_changed", r.text
    monkeypatch.setattr(service, "verify_password", real)
    assert attempt(client, "worker-a1", NEW).status_code == 401
    login(client, "worker-a1", device="phone", password="the-first-change")


# -- 2. the county admin's reset ------------------------------------------------------------------


def test_the_admin_sets_a_forgotten_password_and_every_phone_logs_in_again(client, session):
    phone, other_phone = login(client, "worker-a1", device="phone"), login(client, "worker-a1", device="other")
    admin = login(client, "admin", device="admin-pc")
    r = client.post(reset_url(user_id(session, "worker-a1")), json={"new_password": NEW}, headers=admin)
    assert r.status_code == 204, r.text
    assert not alive(client, phone) and not alive(client, other_phone)
    assert alive(client, admin)  # someone else's password: the admin's token goes on
    assert attempt(client, "worker-a1", DEMO_PASSWORD).status_code == 401
    assert alive(client, login(client, "worker-a1", device="phone", password=NEW))  # same device, new password


def test_the_admins_reset_clears_the_users_failed_logins(client, session):
    """The worker who forgot their password tried it until locked out: the reset lets them straight in."""
    worker = from_address(client, "198.51.100.40")
    guesser = from_address(client, "203.0.113.40")
    for _ in range(5):
        assert attempt(worker, "worker-b1", "what-was-it").status_code == 401
        assert attempt(guesser, "worker-b1", "what-was-it").status_code == 401
    assert attempt(worker, "worker-b1", DEMO_PASSWORD).status_code == 429
    r = client.post(reset_url(user_id(session, "worker-b1")), json={"new_password": NEW},
                    headers=login(client, "admin"))
    assert r.status_code == 204, r.text
    assert failures(session, "worker-b1") == 0  # from every address
    assert attempt(worker, "worker-b1", NEW).status_code == 200


def test_an_admin_resetting_their_own_password_logs_in_again_too(client, session):
    """Unlike POST /me/password the reset proves no knowledge of the old password: no session survives
    it, the asking one included, and the admin logs in with the new password at once."""
    admin = login(client, "admin", device="admin-pc")
    other = login(client, "admin", device="admin-phone")
    r = client.post(reset_url(user_id(session, "admin")), json={"new_password": NEW}, headers=admin)
    assert r.status_code == 204, r.text
    assert not alive(client, admin) and not alive(client, other)
    assert alive(client, login(client, "admin", device="admin-pc", password=NEW))


@pytest.mark.parametrize("caller, target, status", [
    ("office-a", "worker-a1", 403),  # sees the user, may not set their password
    ("worker-a1", "worker-a1", 403),  # not even one's own this way
    ("brigade", "worker-b1", 403),
    ("office-a", "worker-b1", 404),  # another town's user does not exist for town A
    ("police-b", "worker-a2", 404),
])
def test_only_the_admin_sets_passwords(client, session, caller, target, status):
    target_phone = login(client, target, device="target-phone")
    r = client.post(reset_url(user_id(session, target)), json={"new_password": NEW},
                    headers=login(client, caller, device="caller-phone"))
    assert r.status_code == status, r.text
    assert alive(client, target_phone)
    assert attempt(client, target, NEW).status_code == 401  # unchanged


@pytest.mark.parametrize("target", ["no-such-user", "a%00b"])
def test_an_unknown_user_is_a_404(client, target):
    r = client.post(reset_url(target), json={"new_password": NEW}, headers=login(client, "admin"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text


@pytest.mark.parametrize("new, code", [("short-7", "weak_password"), (" " * 20, "weak_password"),
                                       ("p" * 201, "password_too_long")])
def test_the_admins_reset_obeys_the_password_rules(client, session, new, code):
    phone = login(client, "worker-a1", device="phone")
    r = client.post(reset_url(user_id(session, "worker-a1")), json={"new_password": new},
                    headers=login(client, "admin"))
    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    assert alive(client, phone)
    login(client, "worker-a1", device="phone2")  # unchanged


def test_each_change_is_logged_with_who_and_whose_never_the_password(client, session, caplog):
    caplog.set_level(logging.INFO, logger="firegrid")
    worker = login(client, "worker-a1")
    assert change(client, worker).status_code == 204
    assert client.post(reset_url(user_id(session, "worker-a2")), json={"new_password": "reset-by-admin-1"},
                       headers=login(client, "admin")).status_code == 204
    lines = [r.getMessage() for r in caplog.records if r.name == "firegrid" and r.levelno == logging.INFO]
    own = [m for m in lines if "'worker-a1'" in m]
    reset = [m for m in lines if "'worker-a2'" in m]
    assert len(own) == 1 and "own password" in own[0]
    assert len(reset) == 1 and "admin 'admin'" in reset[0]
    for text in lines + [caplog.text]:
        assert NEW not in text and DEMO_PASSWORD not in text and "reset-by-admin-1" not in text


# -- 3. the command line --------------------------------------------------------------------------


def _seed_tokens_and_failures(username: str) -> None:
    """Two phones signed in and a few failed logins, in the CLI's database."""
    settings = get_settings()
    engine = make_engine(settings.database_url)
    with Session(engine) as s:
        uid = service.find_user(s, username).id
        for phone in ("phone-1", "phone-2"):
            service.issue_token(s, settings, uid, device_key=phone, device_name=None, now=utcnow(), address="x")
        for addr in ("192.0.2.1", "192.0.2.2"):
            s.add(LoginFailure(username=username, address=addr, at=utcnow()))
        s.commit()
    engine.dispose()


def _state(username: str) -> tuple[str, int, int]:
    """(password hash, live tokens, failed logins) of the user, in the CLI's database."""
    engine = make_engine(get_settings().database_url)
    with Session(engine) as s:
        user = s.exec(select(User).where(User.username == username)).one()
        live = s.exec(select(func.count()).select_from(AuthToken)
                      .where(AuthToken.user_id == user.id, AuthToken.revoked_at.is_(None))).one()
        state = (user.password_hash, live, failures(s, username))
    engine.dispose()
    return state


def test_cli_set_password_lets_the_admin_back_in_and_ends_every_session(cli_db):
    _seed_tokens_and_failures("admin")
    old_hash, live, failed = _state("admin")
    assert (live, failed) == (2, 2)
    r = cli_db.invoke(cli, ["user", "set-password", "Admin", "--password", NEW])  # any case, as at login
    assert r.exit_code == 0, r.output
    assert "admin" in r.output and "2 tokens revoked" in r.output
    new_hash, live, failed = _state("admin")
    assert (live, failed) == (0, 0)
    assert service.verify_password(new_hash, NEW) and not service.verify_password(new_hash, DEMO_PASSWORD)


def test_cli_set_password_prompts_with_confirmation(cli_db):
    r = cli_db.invoke(cli, ["user", "set-password", "worker-a1"], input=f"{NEW}\n{NEW}\n")
    assert r.exit_code == 0, r.output
    assert "confirm" in r.output.lower()
    assert service.verify_password(_state("worker-a1")[0], NEW)


def test_cli_set_password_refuses_an_unknown_user(cli_db):
    r = cli_db.invoke(cli, ["user", "set-password", "nobody", "--password", NEW])
    assert r.exit_code == 1 and "no user named 'nobody'" in r.output


@pytest.mark.parametrize("password, says", [("short-7", "at least 8"), (" " * 12, "at least 8"),
                                            ("p" * 201, "at most 200")])
def test_cli_set_password_refuses_what_the_api_refuses(cli_db, password, says):
    _seed_tokens_and_failures("worker-a2")
    before = _state("worker-a2")
    r = cli_db.invoke(cli, ["user", "set-password", "worker-a2", "--password", password])
    assert r.exit_code == 1 and says in r.output, r.output
    assert _state("worker-a2") == before  # nothing changed, nobody logged out
