"""`firegrid serve --workers 2`, as deployed: a real gunicorn master forking uvicorn workers (app/serving.py)
on a real SQLite file. The workers are forked from a master that imported the app, so they share its
heap; one that dies is replaced; SIGTERM stops them all."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.sync.test_crash import FIREGRID, _port

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")

MB = 1024 * 1024


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        out += [int(c) for c in children]
    return sorted(out)


def _kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in smaps_rollup")


def _wait(predicate, what: str, timeout: float = 30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def server(tmp_path):
    env = {**os.environ, "FIREGRID_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
           "FIREGRID_STORAGE_DIR": str(tmp_path / "blobs"), "FIREGRID_SWEEP_INTERVAL_SECONDS": "0"}
    for cmd in (["migrate"], ["seed-demo"]):
        subprocess.run([FIREGRID, *cmd], env=env, cwd=tmp_path, check=True, capture_output=True)
    port = _port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([FIREGRID, "serve", "--port", str(port), "--workers", "2"], env=env, cwd=tmp_path,
                            stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _up(base), "the server to answer")
        _wait(lambda: len(_children(proc.pid)) == 2, "two workers")
        yield proc, base
    finally:
        if proc.poll() is None:  # as an operator stops it; SIGKILL only if that hangs
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


def test_workers_are_forked_from_a_master_that_imported_the_app(server):
    proc, base = server
    master_cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    assert b"app.serving" in master_cmdline
    for worker in _children(proc.pid):
        # forked: the master's command line (a spawned worker runs `python -c "from multiprocessing..."`)
        assert Path(f"/proc/{worker}/cmdline").read_bytes() == master_cmdline
        # and it shares the master's heap copy-on-write; a spawned worker shares almost none (~32 kB seen)
        assert _kb(worker, "Shared_Dirty") * 1024 > 20 * MB, _kb(worker, "Shared_Dirty")


def test_a_worker_that_dies_is_replaced_and_sigterm_stops_them_all(server):
    proc, base = server
    victim = _children(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    _wait(lambda: victim not in _children(proc.pid) and len(_children(proc.pid)) == 2, "a replacement worker")
    token = httpx.post(base + "/api/v1/auth/token", timeout=10,
                       data={"username": "worker-a1", "password": "firegrid-demo", "device_id": "serve-phone"})
    assert token.status_code == 200, token.text
    for _ in range(8):  # the service answers all along
        assert httpx.get(base + "/api/v1/me", timeout=10,
                         headers={"Authorization": f"Bearer {token.json()['access_token']}"}).status_code == 200

    workers = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    for worker in workers:
        assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]


def test_an_idle_connection_is_kept_for_a_phones_next_request(server):
    """Between two requests of one sync a phone may pause (hashing a photo, a weak signal): the
    connection stays open 5 s, as with uvicorn alone (gunicorn's own default would close it after 2)."""
    import socket

    proc, base = server
    port = int(base.rsplit(":", 1)[1])
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    def response(s: socket.socket) -> bytes:
        """One whole response (b"" if the server closed the connection)."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(v for k, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
                          if k.strip().lower() == b"content-length"))
        while len(body) < length:
            body += s.recv(65536)
        return head

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        assert response(s).startswith(b"HTTP/1.1 200")
        time.sleep(3)
        s.sendall(request)
        assert response(s).startswith(b"HTTP/1.1 200")  # b"" had the server closed it


def test_forked_workers_do_not_outlive_a_killed_master(server):
    """The master SIGKILLed (the OOM killer, a container runtime): its workers must not live on as orphans
    serving the port with the old code, where a restarted server could not bind it (app.serving._die_with)."""
    proc, base = server
    workers = _children(proc.pid)
    proc.kill()
    proc.wait(10)

    def gone() -> bool:
        return all(not Path(f"/proc/{w}").exists() or Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                   for w in workers)

    _wait(gone, "the orphaned workers to exit")
    assert not _up(base)
