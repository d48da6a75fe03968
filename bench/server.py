"""Start a real Firegrid server (`firegrid serve`, N workers) on a throwaway database for a benchmark."""

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
FIREGRID = str(Path(sys.executable).parent / "firegrid")


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> bool:
    """Poll url until it answers 200; False if the process exits or the time runs out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if it has not gone within 15 s."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextmanager
def pg_schema(prefix: str, base_url: str | None = None):
    """A throwaway schema in the benchmark PostgreSQL (bench.common.DEFAULT_PG_URL); yields a database URL
    whose connections use it. Dropped afterwards, however the run ends."""
    import uuid

    import sqlalchemy as sa

    from bench.common import DEFAULT_PG_URL

    base_url = base_url or DEFAULT_PG_URL
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield base_url + f"?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(database_url: str | None = None, workers: int = 2, extra_env: dict | None = None,
                   seed: bool = True):
    """Yields (base_url, server Popen, env). Migrates (and seeds the demo, unless seed=False) first."""
    tmp = Path(tempfile.mkdtemp(prefix="fg-bench-"))
    # PYTHONPATH: the server runs the code of the checkout this file is in, not whichever checkout the
    # virtualenv's editable install points at (a worktree of an older commit would otherwise measure ours)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "FIREGRID_DATABASE_URL": database_url or f"sqlite:///{tmp / 'bench.db'}",
           "FIREGRID_STORAGE_DIR": str(tmp / "blobs"), "FIREGRID_SWEEP_INTERVAL_SECONDS": "0",
           "FIREGRID_LOGIN_MAX_FAILURES_PER_ADDRESS": "100000", **(extra_env or {})}
    for cmd in (["migrate"], ["seed-demo"]) if seed else (["migrate"],):
        subprocess.run([FIREGRID, *cmd], env=env, cwd=tmp, check=True, capture_output=True)
    port = free_port()
    # a file, not a pipe nobody reads: a pipe fills with the access log after ~600 requests and the
    # server then blocks writing to it
    log = tmp / "server.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([FIREGRID, "serve", "--port", str(port), "--workers", str(workers)], env=env, cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_up(base + "/healthz", proc, timeout=20):
            stop(proc)
            raise RuntimeError("server did not start: " + log.read_text(errors="replace")[-2000:])
        yield base, proc, env
    finally:
        stop(proc)


def token(base: str, username: str, device: str) -> dict:
    r = httpx.post(base + "/api/v1/auth/token", data={"username": username, "password": "firegrid-demo",
                                                       "device_id": device}, timeout=30)
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}
