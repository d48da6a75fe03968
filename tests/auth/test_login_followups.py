"""Follow-ups of the login review: a stranger cannot lock a user out, usernames are one account in any
case (in the service and in the database), and two admins creating one username at once get a 409."""

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlmodel import Session, select

from app import migrate
from app.auth import service
from app.auth.models import Role, User
from app.db import make_engine, new_id
from tests.auth.test_auth_review import _usernames, cli_db  # noqa: F401  (a fixture)
from tests.conftest import fresh_database_url, login

TOKEN = "/api/v1/auth/token"
GOOD, BAD = "firegrid-demo", "wrong-password"


def from_address(client: TestClient, host: str) -> TestClient:
    """The same app as ``client``, its requests coming from ``host`` (request.client.host)."""
    return TestClient(client.app, client=(host, 40000), raise_server_exceptions=False)


def attempt(c: TestClient, username: str, password: str):
    return c.post(TOKEN, data={"username": username, "password": password, "device_id": "phone"})


# -- 1. a stranger cannot lock a user out --------------------------------------------------------


def test_failures_from_one_address_do_not_lock_the_user_out_elsewhere(client):
    """A prankster's five wrong passwords lock that username out of their own address only."""
    prankster, worker = from_address(client, "203.0.113.7"), from_address(client, "198.51.100.20")
    for _ in range(5):
        assert attempt(prankster, "worker-a1", BAD).status_code == 401
    r = attempt(prankster, "worker-a1", GOOD)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert "this user from this address" in r.json()["error"]["message"]
    assert r.json()["error"]["limit"] == "user_address" and r.headers["Retry-After"] == "900"
    assert attempt(worker, "worker-a1", GOOD).status_code == 200  # the grid worker on their own phone


def test_a_user_wide_cap_bounds_guessing_from_many_addresses(client, settings):
    settings.login_max_failures_per_user = 2
    cap = settings.login_max_failures_per_user_all_addresses = 20
    for n in range(cap // 2):  # every address stays within its own limit of 2
        guesser = from_address(client, f"192.0.2.{n}")
        assert [attempt(guesser, "office-a", BAD).status_code for _ in range(2)] == [401, 401]
    r = attempt(from_address(client, "192.0.2.200"), "office-a", GOOD)
    assert r.status_code == 429 and r.json()["error"]["limit"] == "user"
    assert "from all addresses" in r.json()["error"]["message"] and "Retry-After" in r.headers
    assert attempt(client, "office-b", GOOD).status_code == 200  # other users are not touched by it


def test_a_success_forgives_that_address_only(client):
    """The user logging in from their phone does not wipe a guesser's failures from elsewhere: the
    guesser's address stays as close to its limit as it was, and the user-wide cap keeps counting it."""
    guesser, worker = from_address(client, "203.0.113.9"), from_address(client, "198.51.100.21")
    for _ in range(4):
        assert attempt(guesser, "police-a", BAD).status_code == 401
    assert attempt(worker, "police-a", BAD).status_code == 401  # a typo on the phone
    assert attempt(worker, "police-a", GOOD).status_code == 200
    assert attempt(guesser, "police-a", BAD).status_code == 401  # its fifth
    assert attempt(guesser, "police-a", BAD).status_code == 429
    for _ in range(4):  # the phone's typo was forgiven by its success: four more before its limit
        assert attempt(worker, "police-a", BAD).status_code == 401
    assert attempt(worker, "police-a", GOOD).status_code == 200


def test_the_per_address_limit_still_holds_across_usernames(client, settings):
    settings.login_max_failures_per_address = 3
    for name in ("worker-a1", "worker-a2", "worker-b1"):
        assert attempt(client, name, BAD).status_code == 401
    r = attempt(client, "police-b", GOOD)
    assert r.status_code == 429 and r.json()["error"]["limit"] == "address"
    assert "from this address" in r.json()["error"]["message"]


# -- 2. usernames in any case ---------------------------------------------------------------------


@pytest.mark.parametrize("typed", ["WORKER-A1", "Worker-a1", "worker-A1"])
def test_login_takes_the_username_in_any_case(client, typed):
    """Android keyboards capitalise the first letter."""
    r = attempt(client, typed, GOOD)
    assert r.status_code == 200, r.text
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert me.json()["username"] == "worker-a1"  # as it was created


def test_failures_count_under_one_key_whatever_the_case(client, session):
    from app.auth.models import LoginFailure

    for typed in ("Office-B", "OFFICE-B", "office-b", "oFFICE-b", "Office-b"):
        assert attempt(client, typed, BAD).status_code == 401
    assert attempt(client, "office-b", GOOD).status_code == 429
    assert set(session.exec(select(LoginFailure.username)).all()) == {"office-b"}


def test_a_username_differing_only_in_case_is_taken(client, units):
    admin = login(client, "admin")
    body = {"username": "Worker-A1", "password": "a-long-password", "role": "grid_worker",
            "org_unit_id": units["grid-a-1-2"].id}
    r = client.post("/api/v1/users", json=body, headers=admin)
    assert r.status_code == 409 and r.json()["error"]["code"] == "username_taken", r.text
    assert "worker-a1" in r.json()["error"]["message"]


def test_a_new_username_keeps_its_case_and_logs_in_in_any_case(client, units):
    body = {"username": "Zhang-San", "password": "a-long-password", "role": "grid_worker",
            "org_unit_id": units["grid-a-1-2"].id}
    r = client.post("/api/v1/users", json=body, headers=login(client, "admin"))
    assert r.status_code == 201 and r.json()["username"] == "Zhang-San"
    h = login(client, "zhang-san", password="a-long-password")
    assert client.get("/api/v1/me", headers=h).json()["username"] == "Zhang-San"
    again = client.post("/api/v1/users", json={**body, "username": "zhang-san"}, headers=login(client, "admin"))
    assert again.status_code == 409 and again.json()["error"]["code"] == "username_taken"


def test_cli_user_create_refuses_a_username_taken_in_another_case(cli_db):  # noqa: F811
    from app.cli import cli

    r = cli_db.invoke(cli, ["user", "create", "Office-A", "--role", "town_office", "--unit", "office-a",
                            "--password", "a-long-password"])
    assert r.exit_code == 2, r.output
    assert "is taken" in r.output and "'office-a'" in r.output
    assert "Office-A" not in _usernames()


def _user_row(unit_id: str, username: str) -> dict:
    return dict(id=new_id(), username=username, display_name="", password_hash="x", role=Role.grid_worker.value,
                org_unit_id=unit_id, is_active=True, is_demo=False, created_at=service.utcnow())


def test_the_database_refuses_usernames_differing_only_in_case(session, units):
    """Whatever writes the row (a script, a later bug): the unique index on lower(username)."""
    with pytest.raises(sa.exc.IntegrityError), session.begin_nested():
        session.execute(sa.insert(User.__table__).values(**_user_row(units["grid-a-1-1"].id, "Worker-A1")))


# -- 3. two admins creating one username at once ----------------------------------------------------


@pytest.mark.parametrize("theirs, mine", [("worker-a9", "worker-a9"), ("worker-a9", "Worker-A9")])
def test_a_username_taken_between_the_check_and_the_insert_is_409(client, units, monkeypatch, theirs, mine):
    """The other admin's row lands after create_user looked for the name and before its insert (as two
    requests at once on PostgreSQL): the database's unique constraint answers, and that is a 409 too."""
    admin = login(client, "admin")
    grid_id = units["grid-a-1-2"].id

    inserted: list[str] = []

    def other_admin(session, flush_context, instances):
        if not inserted and any(isinstance(o, User) and o.username == mine for o in session.new):
            inserted.append(theirs)  # once
            session.connection().execute(sa.insert(User.__table__).values(**_user_row(grid_id, theirs)))

    event.listen(Session, "before_flush", other_admin)
    try:
        body = {"username": mine, "password": "a-long-password", "role": "grid_worker",
                "org_unit_id": units["grid-a-1-2"].id}
        r = client.post("/api/v1/users", json=body, headers=admin)
    finally:
        event.remove(Session, "before_flush", other_admin)
    assert inserted == [theirs]  # the other admin's row did land between the check and the insert
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "username_taken"


def test_another_integrity_error_is_not_called_a_taken_username(session, units):
    """Only the username's constraints mean 'taken': an id that exists already is not that."""
    existing = session.exec(select(User.id).where(User.username == "worker-a1")).one()
    with pytest.raises(sa.exc.IntegrityError):
        service.create_user(session, username="worker-a9", password="a-long-password", role=Role.grid_worker,
                            unit=units["grid-a-1-2"], id=existing)


# -- the migration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migration_names_usernames_that_differ_only_in_case(backend, tmp_path):
    """A deployment where 'Zhangsan' and 'zhangsan' are two accounts: the upgrade stops, names them and
    says what to do, and changes nothing (an admin decides which account keeps the name)."""
    url, cleanup = fresh_database_url(backend, tmp_path)
    engine = make_engine(url)
    try:
        migrate.upgrade(url, revision="0010")
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO org_units (id, code, name, kind, enforcement_power) "
                                 "VALUES ('u1', 'grid-1', '网格', 'grid', false)"))
            for uid, name in (("1", "Zhangsan"), ("2", "zhangsan"), ("3", "lisi")):
                conn.execute(sa.text(
                    "INSERT INTO users (id, username, display_name, password_hash, role, org_unit_id, is_active, "
                    "is_demo, created_at) VALUES (:id, :name, '', 'x', 'grid_worker', 'u1', true, false, "
                    "CURRENT_TIMESTAMP)"), {"id": uid, "name": name})
        with pytest.raises(Exception) as failed:
            migrate.upgrade(url)
        message = str(failed.value)
        assert "'Zhangsan'" in message and "'zhangsan'" in message and "lisi" not in message
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0010"
            conn.execute(sa.text("UPDATE users SET username = 'zhangsan-2' WHERE id = '2'"))
            conn.commit()
        migrate.upgrade(url)  # once renamed, it goes through
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() != "0010"
    finally:
        engine.dispose()
        cleanup()
