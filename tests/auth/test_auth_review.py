"""Review of authentication: odd input gets a clear 4xx on every backend, and an account made by the
CLI obeys the same rules as one made through the API (else it may never be able to log in)."""

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from app.auth.models import User
from app.cli import cli
from app.config import get_settings
from app.db import make_engine
from tests.conftest import login


# PostgreSQL refuses a NUL character in text: reaching the database, such a value was a 500.
@pytest.mark.parametrize("field", ["username", "device_id", "device_name"])
def test_nul_in_a_login_field_is_a_422_naming_it(client, field):
    data = {"username": "worker-a1", "password": "firegrid-demo", "device_id": "phone-1"}
    data[field] = data.get(field, "") + "\x00x"
    r = client.post("/api/v1/auth/token", data=data)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == field


def test_nul_in_a_user_or_device_id_is_a_404(client):
    admin = login(client, "admin")
    assert client.post("/api/v1/users/a%00b/deactivate", headers=admin).status_code == 404
    assert client.post("/api/v1/devices/a%00b/revoke", headers=admin).status_code == 404


@pytest.mark.parametrize("field", ["org_unit_id", "display_name"])
def test_nul_in_a_new_user_is_a_422_naming_the_field(client, units, field):
    body = {"username": "worker-a9", "password": "a-long-password", "role": "grid_worker",
            "org_unit_id": units["grid-a-1-2"].id, "display_name": "张三"}
    body[field] = "x\x00"  # short: the id's max_length must not be what refuses it
    r = client.post("/api/v1/users", json=body, headers=login(client, "admin"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == field


@pytest.fixture
def cli_db(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREGRID_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    get_settings.cache_clear()
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate"]).exit_code == 0
    assert runner.invoke(cli, ["seed-demo"]).exit_code == 0
    yield runner
    get_settings.cache_clear()


def _usernames() -> set[str]:
    engine = make_engine(get_settings().database_url)
    with Session(engine) as s:
        names = set(s.exec(select(User.username)).all())
    engine.dispose()
    return names


@pytest.mark.parametrize("username, password, says", [
    ("worker-a7", "p" * 201, "password"),  # the login form takes at most 200: never able to log in
    ("", "long-enough-pw", "username"),
    ("has space", "long-enough-pw", "username"),
    ("u" * 65, "long-enough-pw", "username"),  # longer than the login form (and the column) take
])
def test_cli_user_create_refuses_what_the_api_refuses(cli_db, username, password, says):
    r = cli_db.invoke(cli, ["user", "create", username, "--role", "grid_worker", "--unit", "grid-a-1-2",
                            "--password", password])
    assert r.exit_code == 2, r.output
    assert says in r.output
    assert username not in _usernames()


def test_cli_user_create_refuses_a_blank_password(cli_db):
    r = cli_db.invoke(cli, ["user", "create", "worker-a8", "--role", "grid_worker", "--unit", "grid-a-1-2",
                            "--password", " " * 12])
    assert r.exit_code == 2, r.output
    assert "worker-a8" not in _usernames()


# -- what a login costs the server -------------------------------------------------------------


def test_a_password_hashed_with_the_old_settings_is_hashed_anew_at_login(client, session):
    """argon2-cffi's default took 64 MiB and four lanes per login; today's settings take 19 MiB and one.
    A hash made before still verifies, and the login that verifies it replaces it."""
    from argon2 import PasswordHasher, extract_parameters

    from app.auth.service import _hasher

    user = session.exec(select(User).where(User.username == "worker-a2")).one()
    user.password_hash = PasswordHasher().hash("firegrid-demo")  # argon2-cffi's defaults
    session.add(user)
    session.commit()
    assert extract_parameters(user.password_hash).memory_cost == 64 * 1024
    login(client, "worker-a2")
    session.refresh(user)
    now = extract_parameters(user.password_hash)
    assert (now.memory_cost, now.time_cost, now.parallelism) == (19 * 1024, 2, 1)
    assert _hasher.verify(user.password_hash, "firegrid-demo")
    login(client, "worker-a2")  # and it still logs in


def test_no_more_than_two_logins_are_verified_at_once(monkeypatch):
    """Each verification holds its argon2 memory: a burst of logins queues for two slots per process."""
    import threading

    from app.auth import service

    inside, most, guard = [0], [0], threading.Lock()
    release = threading.Event()
    two_inside = threading.Event()

    def verify(stored_hash, password):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            if inside[0] == 2:
                two_inside.set()
        release.wait(10)  # held until the test has seen who got in
        with guard:
            inside[0] -= 1
        return True

    class Hasher:  # argon2's own verify cannot be swapped on its object
        pass

    hasher = Hasher()
    hasher.verify = verify
    monkeypatch.setattr(service, "_hasher", hasher)
    threads = [threading.Thread(target=service.verify_password, args=("h", "p")) for _ in range(6)]
    for t in threads:
        t.start()
    assert two_inside.wait(10)
    for t in threads:  # the other four are waiting for a slot, not verifying
        t.join(0.2)
    assert most[0] == 2 and inside[0] == 2
    release.set()
    for t in threads:
        t.join(10)
    assert most[0] == 2 and inside[0] == 0


def test_a_login_is_counted_before_its_password_is_tried(client, monkeypatch):
    """Logins sent together were each counted only after their password was verified, so all of them
    passed a limit none had reached yet: with 40 threads a worker, ~40 guesses instead of 5. The attempt
    is counted (and the limit checked) first, in one write transaction; a success clears it."""
    from sqlmodel import func

    from app.auth import service
    from app.auth.models import LoginFailure

    real = service.verify_password
    seen: list[int] = []

    def verify(stored_hash, password):
        with client.app.state.db.session() as s:
            seen.append(s.exec(select(func.count()).select_from(LoginFailure)
                               .where(LoginFailure.username == "worker-b2")).one())
        return real(stored_hash, password)

    monkeypatch.setattr(service, "verify_password", verify)
    form = {"username": "worker-b2", "password": "wrong-password", "device_id": "guess"}
    for _ in range(5):
        assert client.post("/api/v1/auth/token", data=form).status_code == 401
    assert seen == [1, 2, 3, 4, 5]  # each attempt on record while its password was being tried
    r = client.post("/api/v1/auth/token", data=form)
    assert r.status_code == 429 and len(seen) == 5  # the sixth is refused before any verification

