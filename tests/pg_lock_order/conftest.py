"""Shared harness for the PostgreSQL lock-order tests (found by a review): a database of its own with the demo's org tree, one app
served in-process (desk requests from threads), helpers that hold a thread at a chosen point of its
transaction and wait until another backend blocks on a row lock, and the invariants checked after a race."""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.audit.service import verify_all
from app.config import Settings
from app.db import Database
from app.demo import seed_demo
from app.hazards.models import Hazard
from app.main import create_app
from app.org.models import OrgUnit
from app.places.models import Place
from tests.conftest import PG_URL, login, migrated_engine_at, require_pg
from tests.helpers import hazard_data, op, uid

NOW = datetime.now(timezone.utc).replace(microsecond=0)


@dataclass
class Env:
    engine: sa.Engine
    client: TestClient
    units: dict[str, str]
    place_id: str
    headers: dict[str, dict] = field(default_factory=dict)

    def h(self, username: str, device: str = "review-device") -> dict:
        key = f"{username}/{device}"
        if key not in self.headers:
            self.headers[key] = login(self.client, username, device=device)
        return self.headers[key]

    def push(self, username: str, ops: list[dict], device: str = "review-device"):
        return self.client.post("/api/v1/sync/push", json={"ops": ops}, headers=self.h(username, device))

    def report(self, hazard_id: str | None = None, category: str = "ebike_indoor", place_id: str | None = None) -> str:
        data = hazard_data(place_id or self.place_id, NOW - timedelta(minutes=5), photos=[], category=category)
        if hazard_id:
            data["id"] = hazard_id
        r = self.push("worker-a1", [op("hazard.report", data)])
        assert r.status_code == 200, r.text
        [res] = r.json()["results"]
        assert res["status"] == "applied", res
        return res["result"]["hazard_id"]

    def act(self, username: str, hazard_id: str, **body):
        return self.client.post(f"/api/v1/hazards/{hazard_id}/actions", json=body, headers=self.h(username))

    def hazard(self, hazard_id: str) -> Hazard:
        with Session(self.engine) as s:
            return s.get(Hazard, hazard_id)

    def waiting_on_lock(self) -> int:
        with self.engine.connect() as watch:
            return watch.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()")).scalar()

    def wait_until_blocked(self, n: int = 1, timeout: float = 10.0, alive: Callable[[], bool] = lambda: True) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.waiting_on_lock() >= n:
                return True
            if not alive():
                return False
            time.sleep(0.02)
        return False

    def check_invariants(self) -> list[str]:
        """Every hazard: one holder that is an existing unit; audit chains verify."""
        problems: list[str] = []
        with Session(self.engine) as s:
            units = set(s.exec(select(OrgUnit.id)).all())
            for h in s.exec(select(Hazard)).all():
                if h.holder_unit_id not in units:
                    problems.append(f"hazard {h.id} held by no unit ({h.holder_unit_id})")
            for p in verify_all(s):
                if not isinstance(p, int):
                    problems.append(f"audit: {p}")
        return problems


@contextmanager
def own_database() -> Iterator[sa.Engine]:
    """A database of its own, not a schema of the shared one: migrations build indexes CONCURRENTLY, which
    waits for every transaction of the database, and other suites run on the shared one meanwhile."""
    require_pg()
    name = f"fg_review_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_URL.rsplit("/", 1)[0] + "/" + name

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    with migrated_engine_at(url, drop) as engine:
        yield engine


@pytest.fixture
def env(tmp_path) -> Iterator[Env]:
    with own_database() as engine:
        with Session(engine) as s:
            seed_demo(s, with_hazards=False)
            s.commit()
            units = {u.code: u.id for u in s.exec(select(OrgUnit)).all()}
            place_id = s.exec(select(Place).where(Place.grid_id == units["grid-a-1-1"],
                                                  Place.place_class == "rental")).first().id
        settings = Settings(database_url="sqlite:///unused", storage_dir=tmp_path / "blobs", secret_key="t" * 40,
                            env="dev", sweep_interval_seconds=0)
        app = create_app(settings, Database(engine), clock=lambda: NOW)
        with TestClient(app, raise_server_exceptions=False) as c:
            yield Env(engine, c, units, place_id)


class Gate:
    """Hold a thread at a hooked point until released: ``arrived`` is set when it gets there."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.go = threading.Event()

    def __call__(self) -> None:
        self.arrived.set()
        assert self.go.wait(20), "gate never opened"


def run_threads(*fns: Callable[[], object]) -> list[threading.Thread]:
    threads = [threading.Thread(target=f, daemon=True) for f in fns]
    for t in threads:
        t.start()
    return threads


def ordered_ids() -> tuple[str, str]:
    """Two fresh hazard ids, the first sorting before the second (as PostgreSQL orders text here)."""
    a, b = uid(), uid()
    return ("0" + a[1:], "f" + b[1:])
