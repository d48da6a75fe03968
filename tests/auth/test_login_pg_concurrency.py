"""Logins and new users at once on a real PostgreSQL, through separate connections and transactions
(the per-test harness shares one connection, so it cannot show a race).

There, unlike SQLite, writers run side by side: begin_attempt's advisory locks are all that stop
wrong-password logins sent together from each counting the failures before any of them is on record,
and all getting their password tried. A barrier inside the check holds each attempt, once counted,
until as many as can get there at once have counted too, so without the locks they all see the
same count; with them only one attempt is ever inside, the barrier breaks once (after its timeout)
and the rest go through one by one.
"""

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app import migrate
from app.auth import service
from app.auth.models import Role
from app.config import Settings
from app.db import Database, make_engine
from app.main import create_app
from app.org.models import OrgUnit, UnitKind
from app.org.service import create_unit
from tests.conftest import fresh_database_url, require_pg

PASSWORD = "the-right-password"
BARRIER_TIMEOUT = 3.0  # seconds one attempt waits for others inside the check (only ever without the lock)


class Pg:
    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.db = Database(engine)
        self.username = f"Target-{uuid.uuid4().hex[:8]}"  # logged in as typed in lower case below
        with Session(engine) as s:
            county = create_unit(s, code="c", name="县", kind=UnitKind.county, parent=None)
            town = create_unit(s, code="t", name="镇", kind=UnitKind.town, parent=county)
            community = create_unit(s, code="cm", name="社区", kind=UnitKind.community, parent=town)
            grid = create_unit(s, code="g", name="网格", kind=UnitKind.grid, parent=community)
            service.create_user(s, username=self.username, password=PASSWORD, role=Role.grid_worker, unit=grid)
            service.create_user(s, username="admin-x", password=PASSWORD, role=Role.admin, unit=county)
            s.commit()


@pytest.fixture
def pg(tmp_path) -> Iterator[Pg]:
    require_pg()
    url, cleanup = fresh_database_url("postgresql", tmp_path)
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        yield Pg(engine)
    finally:
        engine.dispose()
        cleanup()


def _address_from_header(app):
    """The ASGI app with each request's client address taken from an X-Test-Address header."""
    async def wrapped(scope, receive, send):
        if scope["type"] == "http":
            for k, v in scope["headers"]:
                if k == b"x-test-address":
                    scope = {**scope, "client": (v.decode(), 40000)}
        await app(scope, receive, send)
    return wrapped


def _storm(pg: Pg, monkeypatch, settings: Settings, addresses: list[str], at_once: int) -> tuple[int, list[int]]:
    """Wrong-password logins for one username, one per entry of ``addresses``, all sent at once;
    ``at_once``: how many could be inside the check together without the per-user lock.
    Returns (how many got to the password check, the status codes)."""
    tried, guard = [0], threading.Lock()
    real_verify, real_check = service.verify_password, service._check_rate_limit
    barrier = threading.Barrier(at_once)

    def verify(stored_hash, password):
        with guard:
            tried[0] += 1
        return real_verify(stored_hash, password)

    def check(*args, **kwargs):
        real_check(*args, **kwargs)  # passed: this attempt is about to be counted
        try:
            barrier.wait(BARRIER_TIMEOUT)
        except threading.BrokenBarrierError:  # the lock let no one else in: go on alone
            pass

    monkeypatch.setattr(service, "verify_password", verify)
    monkeypatch.setattr(service, "_check_rate_limit", check)
    app = create_app(settings, pg.db)
    with TestClient(_address_from_header(app), raise_server_exceptions=False) as client:
        def login(address: str) -> int:
            form = {"username": pg.username.lower(), "password": "wrong-password"}
            return client.post("/api/v1/auth/token", data=form, headers={"X-Test-Address": address}).status_code

        with ThreadPoolExecutor(len(addresses)) as pool:
            codes = list(pool.map(login, addresses))
    return tried[0], codes


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(database_url="postgresql://unused", storage_dir=tmp_path / "blobs", secret_key="t" * 40,
                    env="dev", sweep_interval_seconds=0)


def test_logins_sent_together_from_one_address_get_no_more_tries_than_its_limit(pg, monkeypatch, settings):
    limit = settings.login_max_failures_per_user  # per (username, address)
    tried, codes = _storm(pg, monkeypatch, settings, ["203.0.113.5"] * 16, at_once=16)
    assert tried == limit, f"{tried} wrong passwords were tried, the limit is {limit}"
    assert sorted(codes) == [401] * limit + [429] * (16 - limit)


def test_logins_sent_together_from_many_addresses_get_no_more_tries_than_the_user_wide_cap(
        pg, monkeypatch, settings):
    """Two tries from each of twelve addresses, each within its own limit: only the user-wide cap (and
    the per-user lock that makes it hold) stops them; the per-address locks do not serialise them."""
    settings.login_max_failures_per_user = 2
    cap = settings.login_max_failures_per_user_all_addresses = 20
    addresses = [f"198.51.100.{n}" for n in range(12)] * 2
    tried, codes = _storm(pg, monkeypatch, settings, addresses, at_once=12)
    assert tried == cap, f"{tried} wrong passwords were tried, the user-wide cap is {cap}"
    assert sorted(codes) == [401] * cap + [429] * (len(addresses) - cap)


# -- two admins creating one username at once ---------------------------------------------------


@pytest.mark.parametrize("first, second", [("chen-hong", "chen-hong"), ("chen-hong", "Chen-Hong")])
def test_two_admins_creating_one_username_at_once_the_second_gets_409(pg, first, second):
    """The first admin's insert is not committed when the second looks for the name: the second's
    insert waits on the unique index, and fails when the first commits; that is username_taken too."""
    with Session(pg.engine) as s:
        grid_id = s.exec(select(OrgUnit.id).where(OrgUnit.code == "g")).one()
    a, b = Session(pg.engine), Session(pg.engine)
    try:
        service.create_user(a, username=first, password=PASSWORD, role=Role.grid_worker, unit=a.get(OrgUnit, grid_id))
        a.flush()
        pid = b.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        outcome: list[BaseException | None] = []

        def second_admin() -> None:
            try:
                service.create_user(b, username=second, password=PASSWORD, role=Role.grid_worker,
                                    unit=b.get(OrgUnit, grid_id))
                b.commit()
                outcome.append(None)
            except BaseException as exc:  # looked at below
                b.rollback()
                outcome.append(exc)

        t = threading.Thread(target=second_admin)
        t.start()
        with pg.engine.connect() as watch:  # until the second waits on the first's row (or is done)
            for _ in range(400):
                waiting = watch.execute(sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p"),
                                        {"p": pid}).scalar()
                if waiting == "Lock" or not t.is_alive():
                    break
                threading.Event().wait(0.05)
        a.commit()
        t.join(30)
        assert not t.is_alive()
        err = outcome[0]
        assert getattr(err, "code", None) == "username_taken" and getattr(err, "status", None) == 409, repr(err)
    finally:
        a.close()
        b.close()
