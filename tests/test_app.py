"""Health, error shape, production safety."""

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings, UnsafeConfiguration
from app.main import create_app
from tests.conftest import login

STRONG_KEY = "kQ3v-9XbT_2mLw8ZrYc4Nd7HfUe1PaJs6GoBi5Vx0Ct"  # as secrets.token_urlsafe(32) makes them


def test_healthz(client, backend):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["database"] == backend


def test_unknown_api_path_is_json_404(client):
    r = client.get("/api/v1/no-such-thing", headers=login(client, "admin"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_validation_error_names_the_field(client, units):
    r = client.post("/api/v1/places", json={"name": "x", "grid_id": units["grid-a-1-1"].id, "place_class": "nine_small",
                                            "lon": 300}, headers=login(client, "office-a"))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "validation_error" and [f["field"] for f in err["fields"]] == ["lon"]


def test_unexpected_error_leaks_no_stack_trace(db, settings):
    app = create_app(settings, db)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals at /etc/passwd")

    app.router.routes.insert(0, app.router.routes.pop())  # before the PWA mount
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal_error", "message": "internal server error"}}


def test_prod_refuses_default_secret(db):
    app = create_app(Settings(env="prod", database_url="sqlite:///unused"), db)
    with pytest.raises(UnsafeConfiguration, match="SECRET_KEY"):
        with TestClient(app):
            pass


def test_prod_refuses_demo_accounts(db):
    app = create_app(Settings(env="prod", database_url="sqlite:///unused", secret_key=STRONG_KEY), db)
    with pytest.raises(UnsafeConfiguration, match="demo accounts"):
        with TestClient(app):
            pass


def test_prod_starts_without_demo_accounts(db, session):
    from sqlalchemy import update

    from app.auth.models import User

    session.execute(update(User).values(is_demo=False))
    session.commit()
    app = create_app(Settings(env="prod", database_url="sqlite:///unused", secret_key=STRONG_KEY), db)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200


def test_pwa_served_at_root(client):
    r = client.get("/")
    assert r.status_code == 200 and "Firegrid" in r.text


def test_serving_workers_freeze_their_startup_heap(tmp_path):
    """app.asgi (what uvicorn's workers import) moves the start-up objects out of the cyclic
    collector's reach; create_app() alone (tests, scripts) leaves the collector as it is."""
    import subprocess
    import sys

    env = {**os.environ, "FIREGRID_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "FIREGRID_STORAGE_DIR": str(tmp_path / "blobs"), "FIREGRID_ENV": "dev"}
    probe = ("import gc, sys; import {mod}; print(gc.get_freeze_count())")
    counts = {}
    for mod in ("app.main", "app.asgi"):
        out = subprocess.run([sys.executable, "-c", probe.format(mod=mod)], env=env, capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parent.parent)
        counts[mod] = int(out.stdout.split()[-1])
    assert counts["app.main"] == 0
    assert counts["app.asgi"] > 10_000


def test_serve_execs_uvicorn_or_the_forking_server_with_glibc_malloc_tuned_unless_the_operator_tuned_it(monkeypatch):
    import os

    from typer.testing import CliRunner

    from app import cli

    knobs = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    calls = []
    monkeypatch.setattr(os, "execv", lambda exe, args: calls.append((args, {k: os.environ.get(k) for k in knobs})))
    for knob in knobs:  # set first, so that monkeypatch restores what serve's setdefault writes
        monkeypatch.setenv(knob, "x")
        monkeypatch.delenv(knob)
    assert CliRunner().invoke(cli.cli, ["serve", "--workers", "2"]).exit_code == 0
    args, env = calls[-1]
    assert env == {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "2097152"}
    # several workers: forked from a master that imported the app (app/serving.py)
    assert args[1:4] == ["-P", "-m", "app.serving"] and args[args.index("--workers") + 1] == "2"
    assert args[args.index("--bind") + 1] == "127.0.0.1:8000"
    assert CliRunner().invoke(cli.cli, ["serve", "--workers", "3", "--host", "::", "--port", "9000"]).exit_code == 0
    assert calls[-1][0][calls[-1][0].index("--bind") + 1] == "[::]:9000"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert CliRunner().invoke(cli.cli, ["serve"]).exit_code == 0  # one process: plain uvicorn
    args, env = calls[-1]
    assert env == {"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "0"}
    assert args[1:4] == ["-P", "-m", "uvicorn"] and "--workers" not in args
    assert args[args.index("--ws") + 1] == "none"  # no WebSocket library
    assert CliRunner().invoke(cli.cli, ["serve", "--workers", "2", "--reload"]).exit_code == 0
    assert calls[-1][0][1:4] == ["-P", "-m", "uvicorn"] and "--reload" in calls[-1][0]


@pytest.mark.parametrize("path", ["/api/v1/hazards/a%00b", "/api/v1/places/a%00b", "/api/v1/org/units/a%00b"])
def test_a_nul_in_an_id_is_a_client_error_on_either_backend(client, backend, path):
    """PostgreSQL's driver refuses a NUL in any text it is sent, a lookup's too: that is the caller's input (a
    422), never a 500. SQLite looks it up and finds nothing."""
    r = client.get(path, headers=login(client, "office-a"))
    assert r.status_code == (422 if backend == "postgresql" else 404), r.text
    assert r.json()["error"]["code"] == ("validation_error" if backend == "postgresql" else "not_found")
