"""Test databases are built by `alembic upgrade head`, on a real SQLite file and, where the machine runs
one, a real PostgreSQL (CI does: there a missing PostgreSQL fails the run instead of skipping).

The demo data is seeded once per backend; every test then runs inside a transaction that is rolled
back, so tests never clean up by hand and cannot see each other's writes.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app import migrate
from app.config import Settings
from app.db import Database, make_engine
from app.demo import DEMO_PASSWORD, seed_demo
from app.main import create_app
from app.org.models import OrgUnit

PG_URL = os.environ.get("FIREGRID_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pg_available() -> bool:
    try:
        eng = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        eng.dispose()
        return True
    except sa.exc.OperationalError:
        return False


_PG = pg_available()


def require_pg() -> None:
    if not _PG:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true but {PG_URL} does not answer")
        pytest.skip("PostgreSQL not running here (set FIREGRID_TEST_PG_URL)")


class PgSchema:
    """A throwaway schema in the test database, so parallel runs never meet."""

    def __init__(self) -> None:
        self.name = f"fg_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{self.name}"'))
        admin.dispose()
        self.url = PG_URL + ("&" if "?" in PG_URL else "?") + f"options=-csearch_path%3D{self.name}"

    def drop(self) -> None:
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        admin.dispose()


def fresh_database_url(backend: str, tmp_path: Path) -> tuple[str, object]:
    """An empty database of the given backend; returns (url, cleanup)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / f'fg-{uuid.uuid4().hex[:8]}.db'}", lambda: None
    require_pg()
    schema = PgSchema()
    return schema.url, schema.drop


@contextmanager
def migrated_engine_at(url: str, cleanup) -> Iterator[sa.Engine]:
    """The database at ``url`` migrated to head, its engine; ``cleanup()`` afterwards, whatever happened."""
    engine = None
    try:
        migrate.upgrade(url)
        engine = make_engine(url)
        yield engine
    finally:
        if engine is not None:
            engine.dispose()
        cleanup()


@contextmanager
def fresh_migrated_engine(backend: str, tmp_path: Path) -> Iterator[sa.Engine]:
    """An empty database of the given backend, migrated to head; dropped afterwards (skips without PostgreSQL)."""
    url, cleanup = fresh_database_url(backend, tmp_path)
    with migrated_engine_at(url, cleanup) as engine:
        yield engine


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def migrated_engine(backend, tmp_path_factory) -> Iterator[sa.Engine]:
    url, cleanup = fresh_database_url(backend, tmp_path_factory.mktemp(backend))
    migrate.upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        seed_demo(session, with_hazards=False)  # tests start from empty queues
        session.commit()
    yield engine
    engine.dispose()
    cleanup()


class TestDatabase(Database):
    """Every session joins the test's outer transaction; commit() only releases a savepoint."""

    def __init__(self, engine: sa.Engine, connection: sa.Connection):
        super().__init__(engine)
        self.connection = connection

    def session(self, write: bool = False) -> Session:
        return Session(bind=self.connection, join_transaction_mode="create_savepoint", expire_on_commit=False)

    @contextmanager
    def connect(self, write: bool = False) -> Iterator[sa.Connection]:
        with self.connection.begin_nested():
            yield self.connection


@pytest.fixture
def db(migrated_engine) -> Iterator[TestDatabase]:
    with migrated_engine.connect() as connection:
        outer = connection.begin()
        yield TestDatabase(migrated_engine, connection)
        outer.rollback()


@pytest.fixture
def session(db) -> Iterator[Session]:
    with db.session() as s:
        yield s


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(database_url="sqlite:///unused", storage_dir=tmp_path / "blobs", secret_key="t" * 40,
                    env="dev", sweep_interval_seconds=0)


@pytest.fixture
def client(db, settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db), raise_server_exceptions=False) as c:
        yield c


def login(client: TestClient, username: str, device: str = "test-device", password: str = DEMO_PASSWORD) -> dict:
    r = client.post("/api/v1/auth/token", data={"username": username, "password": password, "device_id": device})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
def units(session) -> dict[str, OrgUnit]:
    """Demo units by code."""
    return {u.code: u for u in session.exec(select(OrgUnit)).all()}


class FakeClock:
    """The app's clock, moved by the test (the service never reads the wall clock directly)."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    from datetime import datetime, timezone

    return FakeClock(datetime(2026, 3, 2, 1, 0, tzinfo=timezone.utc))  # Monday 09:00 in China


@pytest.fixture
def clocked_client(db, settings, clock) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db, clock=clock), raise_server_exceptions=False) as c:
        yield c
