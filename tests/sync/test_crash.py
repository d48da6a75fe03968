"""A server killed with SIGKILL in the middle of pushes loses nothing it acknowledged, and accepts the
phone's retry without duplicating anything. A real server process on a real SQLite file."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, func, select

from app.db import make_engine
from app.hazards.models import Hazard
from app.sync.models import SyncOp

FIREGRID = str(Path(sys.executable).parent / "firegrid")
CN = timezone(timedelta(hours=8))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp: Path):
        self.env = {**os.environ, "FIREGRID_DATABASE_URL": f"sqlite:///{tmp / 'crash.db'}",
                    "FIREGRID_STORAGE_DIR": str(tmp / "blobs"), "FIREGRID_SWEEP_INTERVAL_SECONDS": "0"}
        self.tmp = tmp
        self.port = _port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def setup(self):
        for cmd in (["migrate"], ["seed-demo"]):
            subprocess.run([FIREGRID, *cmd], env=self.env, cwd=self.tmp, check=True, capture_output=True)

    def start(self):
        self.proc = subprocess.Popen([FIREGRID, "serve", "--port", str(self.port)], env=self.env, cwd=self.tmp,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def login(self) -> dict:
        r = httpx.post(self.base + "/api/v1/auth/token",
                       data={"username": "worker-a1", "password": "firegrid-demo", "device_id": "crash-phone"})
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def _batch(place_ids, n):
    now = datetime.now(CN)
    return [{"op_id": str(uuid.uuid4()), "type": "hazard.report", "data": {
        "id": str(uuid.uuid4()), "place_id": place_ids[i % len(place_ids)], "category": "ebike_indoor",
        "severity": "general", "description": "楼道充电", "found_at": now.isoformat(), "photos": []}}
        for i in range(n)]


@pytest.mark.slow
def test_sigkill_mid_push_loses_nothing_acknowledged(tmp_path):
    server = Server(tmp_path)
    server.setup()
    server.start()
    try:
        h = server.login()
        places = [p["id"] for p in httpx.get(server.base + "/api/v1/places", headers=h).json()["items"]]
        batches = [_batch(places, 50) for _ in range(60)]
        acknowledged: set[str] = set()
        stop = threading.Event()

        def phone():
            with httpx.Client(base_url=server.base, headers=h, timeout=10) as c:
                for b in batches:
                    if stop.is_set():
                        return
                    try:
                        r = c.post("/api/v1/sync/push", json={"ops": b})
                    except httpx.HTTPError:
                        return  # the connection died with the server
                    if r.status_code == 200:
                        acknowledged.update(x["op_id"] for x in r.json()["results"] if x["status"] == "applied")

        t = threading.Thread(target=phone)
        t.start()
        deadline = time.time() + 20
        while len(acknowledged) < 500 and time.time() < deadline:  # kill while batches are in flight
            time.sleep(0.01)
        server.kill()
        stop.set()
        t.join(20)
        assert acknowledged, "nothing was pushed before the kill"

        engine = make_engine(server.env["FIREGRID_DATABASE_URL"])
        with Session(engine) as s:
            stored = set(s.exec(select(SyncOp.op_id)).all())
        assert acknowledged <= stored, "an acknowledged op was lost"

        # the phone retries everything it has (it cannot know what the lost response said)
        server.start()
        with httpx.Client(base_url=server.base, headers=h, timeout=30) as c:
            for b in batches:
                r = c.post("/api/v1/sync/push", json={"ops": b})
                assert r.status_code == 200
                assert {x["status"] for x in r.json()["results"]} <= {"applied", "duplicate"}
        all_ops = {o["op_id"] for b in batches for o in b}
        all_hazards = {o["data"]["id"] for b in batches for o in b}
        with Session(engine) as s:
            assert set(s.exec(select(SyncOp.op_id)).all()) >= all_ops
            rows = s.exec(select(Hazard.id, func.count()).where(Hazard.id.in_(all_hazards)).group_by(Hazard.id)).all()
        assert len(rows) == len(all_hazards) and {n for _, n in rows} == {1}
        engine.dispose()
    finally:
        if server.proc and server.proc.poll() is None:
            server.proc.kill()


@pytest.mark.slow
def test_sigkill_mid_upload_leaves_no_half_photo_and_the_retry_succeeds(tmp_path):
    import hashlib
    import io

    from PIL import Image

    from app.photos.models import Blob

    server = Server(tmp_path)
    server.setup()
    server.start()
    try:
        h = server.login()
        buf = io.BytesIO()
        Image.effect_noise((1200, 1200), 60).convert("RGB").save(buf, "JPEG", quality=95)
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        sent = threading.Event()

        def slow_body():
            for i in range(0, len(data), 16384):
                if i > len(data) // 2:
                    sent.set()
                    time.sleep(0.2)  # a weak connection: the server is killed while the rest is on its way
                yield data[i:i + 16384]

        def upload():
            try:
                httpx.put(f"{server.base}/api/v1/blobs/{sha}", content=slow_body(), headers=h, timeout=30)
            except httpx.HTTPError:
                pass

        t = threading.Thread(target=upload)
        t.start()
        assert sent.wait(20)
        server.kill()
        t.join(30)
        blob_dir = Path(server.env["FIREGRID_STORAGE_DIR"])
        assert not (blob_dir / sha[:2] / sha[2:4] / sha).exists(), "half a photo is visible under its name"
        engine = make_engine(server.env["FIREGRID_DATABASE_URL"])
        with Session(engine) as s:
            assert s.get(Blob, sha) is None
        server.start()
        missing = httpx.post(server.base + "/api/v1/blobs/missing", json={"sha256": [sha]}, headers=h).json()
        assert missing == {"missing": [sha]}
        r = httpx.put(f"{server.base}/api/v1/blobs/{sha}", content=data, headers=h, timeout=30)
        assert r.status_code == 201
        assert (blob_dir / sha[:2] / sha[2:4] / sha).read_bytes() == data
        engine.dispose()
    finally:
        if server.proc and server.proc.poll() is None:
            server.proc.kill()
