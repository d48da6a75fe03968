"""A phone on a weak link: its TCP connections die in the middle of a request or of the answer, and it
retries each request, the same bytes, until it hears an answer. Nothing it captured is lost or duplicated.

A real server process (`firegrid serve`, one worker) on a fresh database, a chaos proxy in the test process
(tests/sync/chaos_proxy.py) between it and the phone, cutting connections at points a seeded random
generator picks: mid-headers, mid-body of a push, mid-body of a streamed 1-3 MB photo upload, after the
whole request but before any answer byte (the server did the work; the phone never hears), mid-answer,
and a link that hangs until the phone's timeout. The phone syncs as API.md (the public contract) says: blobs/missing,
PUT each missing photo, push each batch, pull until `more` is false; a plain http.client, one connection
per attempt, no retries of its own.

Then the database, the blob store and the API are checked, and the end state is compared with the same
outbox sent through a proxy that cuts nothing, into another fresh database.

FIREGRID_CHAOS_SEED=<n> replays another schedule of cuts (the seed is in every failure message).
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import Session

from app.audit.service import verify_all
from app.db import make_engine
from tests.conftest import fresh_database_url
from tests.photos.conftest import jpeg_bytes, noisy_rgb
from tests.sync.chaos_proxy import ChaosProxy, Plan

pytestmark = pytest.mark.slow

FIREGRID = str(Path(sys.executable).parent / "firegrid")
CN = timezone(timedelta(hours=8))
SEED = int(os.environ.get("FIREGRID_CHAOS_SEED", "20260302"))
OUTBOX_SEED = 7  # the phone's data: the same in every run, whatever the cuts
MAX_ATTEMPTS = 40  # a phone retries for ever; a test gives up somewhere
TIMEOUT = 20.0  # the phone's socket timeout, for the connections the proxy does not hang
STALL_TIMEOUT = 1.5  # ... and for those it does (the phone's timeout is all that ends a hanging link)
P_CUT = 0.45  # chance that an attempt is cut somewhere (after the cuts every run must have, below)
PULL_LIMIT = 20
# Every run makes these cuts first (at the first request of that kind), so each kind of cut is tested
# whatever the seed; the rest are random.
OWED = [("blobs.missing", "req_head"), ("blob.put", "req_body"), ("sync.push", "req_body"),
        ("sync.push", "before_answer"), ("blob.put", "before_answer"), ("sync.push", "answer"),
        ("sync.pull", "answer"), ("blob.put", "req_body"), ("sync.pull", "req_head"), ("sync.push", "stall")]
MUST_HAPPEN = ("req_head", "push_body", "photo_body", "before_answer", "answer", "stall")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`firegrid migrate`, `seed-demo` and `serve` (one worker) on a fresh database of the backend."""

    def __init__(self, backend: str, tmp: Path):
        tmp.mkdir(parents=True, exist_ok=True)
        self.url, self._cleanup = fresh_database_url(backend, tmp)
        self.tmp = tmp
        self.blobs = tmp / "blobs"
        self.env = {**os.environ, "FIREGRID_DATABASE_URL": self.url, "FIREGRID_STORAGE_DIR": str(self.blobs),
                    "FIREGRID_SWEEP_INTERVAL_SECONDS": "0", "FIREGRID_ENV": "dev"}
        self.port = _port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "server.log"
        self.engine = make_engine(self.url)

    @staticmethod
    def prepare(servers: list[Server]) -> None:
        """Migrate and seed the servers' databases, side by side (each takes a few seconds)."""
        for cmd in (["migrate"], ["seed-demo"]):
            procs = [subprocess.Popen([FIREGRID, *cmd], env=s.env, cwd=s.tmp, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT) for s in servers]
            for p in procs:
                out, _ = p.communicate(120)
                assert p.returncode == 0, out.decode(errors="replace")[-2000:]

    def launch(self) -> None:
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen([FIREGRID, "serve", "--port", str(self.port), "--workers", "1"], env=self.env,
                                     cwd=self.tmp, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        for _ in range(400):
            try:
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("server did not start: " + self.log.read_text(errors="replace")[-2000:])

    def login(self, username: str, device: str) -> dict:
        r = httpx.post(self.base + "/api/v1/auth/token",
                       data={"username": username, "password": "firegrid-demo", "device_id": device})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            self._log.close()
        self.engine.dispose()
        self._cleanup()


# -- the phone's data ---------------------------------------------------------------------------------

def make_photos() -> list[bytes]:
    """Six JPEGs of 1-3 MB: noise, so a photo is many TCP segments and its upload is streamed."""
    dims = [(1300, 1000, 90), (1500, 1100, 90), (1200, 900, 95), (1700, 1300, 90), (1400, 1200, 95),
            (1600, 1400, 92)]
    return [jpeg_bytes(noisy_rgb(w, h, seed=300 + i), quality=q) for i, (w, h, q) in enumerate(dims)]


def make_outbox(places: list[str], shas: list[str]) -> list[list[dict]]:
    """Six batches of inspections (1-2 hazards each, naming photos) and single hazard reports. Ids are drawn
    from a fixed seed, so every world gets the same outbox; ``places`` are that world's ids in name order."""
    rnd = random.Random(OUTBOX_SEED)
    uid = lambda: str(uuid.UUID(int=rnd.getrandbits(128), version=4))  # noqa: E731
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=CN)
    cats = ["ebike_indoor", "blocked_exit", "improvised_wiring", "flammables_storage", "missing_alarm_extinguisher"]
    n_hazard = 0

    def hazard(place: str, inspection_id: str | None = None) -> dict:
        nonlocal n_hazard
        j = n_hazard
        n_hazard += 1
        pics = [] if j % 4 == 3 else [shas[j % len(shas)]]
        if j % 5 == 0:
            pics.append(shas[(j + 1) % len(shas)])  # two photos on this one
        h = {"id": uid(), "place_id": place, "category": cats[j % len(cats)],
             "severity": "major" if j % 7 == 0 else "general", "violation": j % 6 == 0,
             "description": f"现场第{j}处", "found_at": (t0 + timedelta(minutes=j)).isoformat(), "photos": pics}
        if inspection_id:
            h["inspection_id"] = inspection_id
        return h

    batches = []
    for b in range(6):
        batch = []
        for _ in range(rnd.randint(2, 3)):
            place = places[rnd.randrange(len(places))]
            iid = uid()
            hz = [hazard(place, iid) for _ in range(rnd.randint(1, 2))]
            batch.append({"op_id": uid(), "type": "inspection.submit", "data": {
                "id": iid, "place_id": place, "started_at": (t0 + timedelta(hours=b)).isoformat(),
                "finished_at": (t0 + timedelta(hours=b, minutes=20)).isoformat(), "lat": 31.2, "lon": 121.4,
                "checklist": [{"item": h["category"], "result": "fail", "note": ""} for h in hz]
                + [{"item": "exits_clear", "result": "pass", "note": ""}], "hazards": hz}})
        for _ in range(rnd.randint(1, 2)):
            batch.append({"op_id": uid(), "type": "hazard.report",
                          "data": hazard(places[rnd.randrange(len(places))])})
        batches.append(batch)
    return batches


def hazards_of(batches: list[list[dict]]) -> list[dict]:
    out = []
    for b in batches:
        for o in b:
            out += o["data"]["hazards"] if o["type"] == "inspection.submit" else [o["data"]]
    return out


def named(batches: list[list[dict]]) -> list[str]:
    return list(dict.fromkeys(s for h in hazards_of(batches) for s in h["photos"]))


# -- the phone ----------------------------------------------------------------------------------------

class Phone:
    """Sends each request until it gets an answer: on a connection error or a timeout it opens a new
    connection and sends the same bytes again. With ``rnd`` set, it also tells the proxy where to cut
    each attempt (the cutting is the proxy's; the phone only draws the plan)."""

    def __init__(self, proxy: ChaosProxy, headers: dict, rnd: random.Random | None):
        self.proxy = proxy
        self.headers = headers
        self.rnd = rnd
        self.owed = list(OWED) if rnd else []
        self.attempts = collections.Counter()
        self.failures = collections.Counter()  # what the phone saw when a connection died
        self.answers: list[tuple[str, str, int, bytes]] = []  # (method, path, status, body) of every answer
        self.stalls = sum(kind == "stall" for _, kind in self.owed)  # each costs a timeout: two at most

    def _plan(self, what: str, has_body: bool, attempt: int) -> Plan:
        if self.rnd is None:
            return Plan()
        rnd = self.rnd
        for i, (w, kind) in enumerate(self.owed):
            if w == what and attempt == 0:  # a first attempt: a photo PUT is then of a photo the server lacks
                del self.owed[i]
                break
        else:
            if rnd.random() >= P_CUT:
                return Plan()
            kinds = ["req_head", "before_answer", "answer"] + (["req_body"] * 2 if has_body else [])
            if self.stalls < 2 and rnd.random() < 0.1:
                kinds = ["stall"]
                self.stalls += 1
            kind = rnd.choice(kinds)
        # a photo cut mid-body lingers a little first, so the server has streamed part of it to disk
        linger = rnd.uniform(0.05, 0.2) if kind == "req_body" else 0.0
        return Plan(kind=kind, frac=rnd.uniform(0.02, 0.98), rst=rnd.random() < 0.5, linger=linger)

    def request(self, what: str, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, bytes]:
        headers = {**self.headers}
        if body is not None:
            headers["Content-Type"] = content_type
        for attempt in range(MAX_ATTEMPTS):
            plan = self._plan(what, body is not None, attempt)
            self.attempts[what] += 1
            self.proxy.plan_next(plan)
            conn = http.client.HTTPConnection("127.0.0.1", self.proxy.port,
                                              timeout=STALL_TIMEOUT if plan.kind == "stall" else TIMEOUT)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("content-length") is None and resp.getheader("transfer-encoding") is None:
                    # http.client takes a head cut short by the end of the stream for a whole one and then
                    # reads the body up to the end of the stream: nothing says where the answer ends, so
                    # it is not known to be whole (the server always sends Content-Length)
                    raise http.client.IncompleteRead(data)
            except (OSError, http.client.HTTPException) as e:  # reset, broken pipe, EOF, timeout, short read
                self.failures[type(e).__name__] += 1
                continue
            finally:
                conn.close()
            self.answers.append((method, path, resp.status, data))
            if resp.status >= 500:
                continue  # a phone retries a server error too (the test fails on it, below)
            return resp.status, data
        raise AssertionError(f"seed {SEED}: no answer to {method} {path} after {MAX_ATTEMPTS} attempts")

    def json(self, what: str, method: str, path: str, payload=None, expect=(200,)):
        body = None if payload is None else json.dumps(payload, ensure_ascii=False).encode()
        status, data = self.request(what, method, path, body)
        assert status in expect, f"seed {SEED}: {method} {path} -> {status} {data[:500]!r}"
        return json.loads(data)

    def upload_missing(self, shas: list[str], photos: dict[str, bytes]) -> dict[str, int]:
        missing = self.json("blobs.missing", "POST", "/api/v1/blobs/missing", {"sha256": shas})["missing"]
        statuses = {}
        for sha in missing:
            status, data = self.request("blob.put", "PUT", f"/api/v1/blobs/{sha}", photos[sha], "image/jpeg")
            assert status in (200, 201), f"seed {SEED}: PUT {sha} -> {status} {data[:500]!r}"
            statuses[sha] = status
        return statuses

    def push(self, batch: list[dict]) -> list[dict]:
        return self.json("sync.push", "POST", "/api/v1/sync/push", {"ops": batch})["results"]

    def pull(self, cursor: str | None = None) -> tuple[list[list[dict]], str]:
        pages = []
        while True:
            q = f"?limit={PULL_LIMIT}" + (f"&cursor={cursor}" if cursor else "")
            page = self.json("sync.pull", "GET", "/api/v1/sync/pull" + q)
            pages.append(page["changes"])
            cursor = page["cursor"]
            if not page["more"]:
                return pages, cursor


# -- one world: a server, a proxy, a phone, its day -----------------------------------------------------

class World:
    def __init__(self, backend: str, tmp: Path, chaos: bool, photos: list[bytes]):
        self.server = Server(backend, tmp)
        self.proxy: ChaosProxy | None = None
        self.chaos = chaos
        self.photos = {hashlib.sha256(p).hexdigest(): p for p in photos}
        self.shas = list(self.photos)

    def tmp_files(self) -> list[Path]:
        d = self.server.blobs / "tmp"
        return sorted(d.iterdir()) if d.is_dir() else []

    def run(self) -> None:
        s = self.server
        s.wait_ready()
        self.proxy = ChaosProxy(s.port, on_cut=lambda out: {"tmp_files": len(self.tmp_files())})
        headers = s.login("worker-a1", "weak-link-phone")
        r = httpx.get(s.base + "/api/v1/places", params={"limit": 200}, headers=headers)
        assert r.status_code == 200, r.text
        by_name = sorted((p["name"], p["address"], p["id"]) for p in r.json()["items"])
        self.places = [pid for *_, pid in by_name][:12]
        self.batches = make_outbox(self.places, self.shas)
        self.phone = Phone(self.proxy, headers, random.Random(SEED) if self.chaos else None)
        with s.engine.connect() as conn:
            self.hazards_before = conn.execute(sa.text("SELECT count(*) FROM hazards")).scalar_one()
            self.inspections_before = conn.execute(sa.text("SELECT count(*) FROM inspections")).scalar_one()

        phone = self.phone
        self.first_pull, self.first_cursor = phone.pull()  # the phone's first sync: its whole scope
        first_record_photo = self.batches[0][0]["data"]["hazards"][0]["photos"][0]
        self.put_statuses = phone.upload_missing([first_record_photo], self.photos)  # a photo before its record
        self.results: dict[str, dict] = {}
        for b in self.batches[:3]:
            self.results.update((r["op_id"], r) for r in phone.push(b))
        self.put_statuses |= phone.upload_missing(named(self.batches[:3]), self.photos)  # the others after
        for b in self.batches[3:]:
            self.results.update((r["op_id"], r) for r in phone.push(b))
        self.put_statuses |= phone.upload_missing(self.shas, self.photos)
        self.last_pull, _ = phone.pull()  # all of it again, from nothing
        self.news, _ = phone.pull(self.first_cursor)  # and what changed since the first sync
        self.headers = headers

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        self.server.stop()

    # -- the end state, with this world's random ids (places, units, users, the device) named

    def names(self) -> dict[str, str]:
        """This world's random ids (places, units, users, the phone's device) by what they stand for."""
        names: dict[str, str] = {}
        with self.server.engine.connect() as conn:
            for pid, name, addr in conn.execute(sa.text("SELECT id, name, address FROM places")):
                names[pid] = f"<place {name} {addr}>"
            for uid_, code in conn.execute(sa.text("SELECT id, code FROM org_units")):
                names[uid_] = f"<unit {code}>"
            for uid_, username in conn.execute(sa.text("SELECT id, username FROM users")):
                names[uid_] = f"<user {username}>"
            for (dev,) in conn.execute(sa.text("SELECT DISTINCT device_id FROM sync_ops")):
                names[dev] = "<phone>"
        return names

    def named(self, value) -> str:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True) if not isinstance(value, str) else value
        for k, v in self._names.items():
            text = text.replace(k, v)
        return text

    def snapshot(self) -> dict[str, list]:
        self._names = self.names()
        hz_ids = [h["id"] for h in hazards_of(self.batches)]
        with self.server.engine.connect() as conn:
            def rows(sql: str, **kw) -> list[str]:
                out = []
                for r in conn.execute(sa.text(sql).bindparams(sa.bindparam("ids", expanding=True)), kw):
                    out.append(self.named(repr(tuple(r))))
                return sorted(out)

            return {
                "hazards": rows("SELECT id, place_id, inspection_id, category, severity, violation, status, tier, "
                                "holder_unit_id, rule, duplicate_of_id, merged_into_id, photos, event_seq FROM hazards "
                                "WHERE id IN :ids", ids=hz_ids),
                "inspections": rows("SELECT id, place_id, grid_id, checklist FROM inspections WHERE id IN :ids",
                                    ids=[o["data"]["id"] for b in self.batches for o in b
                                         if o["type"] == "inspection.submit"]),
                "photo_refs": rows("SELECT sha256, hazard_id, record_kind, record_id, added_by_user_id FROM photo_refs "
                                   "WHERE hazard_id IN :ids", ids=hz_ids),
                "blobs": rows("SELECT sha256, size, mime, width, height FROM blobs WHERE sha256 IN :ids",
                              ids=self.shas),
                "events": rows("SELECT hazard_id, seq, kind FROM hazard_events WHERE hazard_id IN :ids", ids=hz_ids),
                "sync_ops": rows("SELECT op_id, type FROM sync_ops WHERE device_id IN "
                                 "(SELECT device_id FROM sync_ops WHERE op_id IN :ids)",
                                 ids=[o["op_id"] for b in self.batches for o in b]),
            }


def _stable(result: dict | None) -> dict | None:
    """An op's result without what depends on the wall clock of the run (deadlines: a blocked exit's is 24 hours
    from the report's arrival), its inspection's hazards' too."""
    if result is None:
        return None
    out = {k: v for k, v in result.items() if not k.endswith("_due")}
    if isinstance(out.get("hazards"), list):
        out["hazards"] = [_stable(h) if isinstance(h, dict) else h for h in out["hazards"]]
    return out


def _pulled(pages: list[list[dict]]) -> list[tuple[str, str]]:
    return [(c["type"], c["id"]) for page in pages for c in page]


# -- the test -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_cut_connections_lose_and_duplicate_nothing(backend, tmp_path):
    photos = make_photos()
    assert all(1_000_000 <= len(p) <= 3_000_000 for p in photos), [len(p) for p in photos]
    chaos = World(backend, tmp_path / "chaos", chaos=True, photos=photos)
    clean = World(backend, tmp_path / "clean", chaos=False, photos=photos)
    try:
        Server.prepare([chaos.server, clean.server])
        chaos.server.launch()
        clean.server.launch()
        chaos.run()
        chaos.proxy.settle()
        w, phone = chaos, chaos.phone
        batches = w.batches
        all_ops = [o for b in batches for o in b]
        hazards = hazards_of(batches)
        inspections = [o["data"] for o in all_ops if o["type"] == "inspection.submit"]
        hz_ids = [h["id"] for h in hazards]
        why = f"seed {SEED}, {backend}"

        # the cuts happened, of every kind (else this test would be testing nothing)
        cuts = collections.Counter(o.label for o in w.proxy.outcomes if o.cut)
        for kind in MUST_HAPPEN:
            assert cuts[kind] >= 1, f"{why}: no cut of kind {kind}: {dict(cuts)}"
        assert not w.phone.owed, w.phone.owed

        # every answer the phone got was a real one: no server error on the way
        errors = [(m, p, st, body[:300]) for m, p, st, body in phone.answers if st >= 500]
        assert errors == [], f"{why}: server errors: {errors}"

        # every op: applied or duplicate, never rejected; a duplicate says what the first answer said
        with w.server.engine.connect() as conn:
            stored = {op_id: (json.loads(res) if isinstance(res, str) else res) for op_id, res in conn.execute(
                sa.text("SELECT op_id, result FROM sync_ops WHERE op_id IN :ids")
                .bindparams(sa.bindparam("ids", expanding=True)), {"ids": [o["op_id"] for o in all_ops]})}
        assert set(w.results) == {o["op_id"] for o in all_ops}
        bad = {k: r for k, r in w.results.items() if r["status"] not in ("applied", "duplicate")}
        assert bad == {}, f"{why}: ops not applied: {bad}"
        assert set(stored) == set(w.results), f"{why}: ops the server has no record of"
        for op_id, r in w.results.items():
            assert r["result"] == stored[op_id], f"{why}: op {op_id} answered {r} but applied as {stored[op_id]}"
        # a push cut after the server applied it was heard on a retry, as duplicates; likewise a photo (200)
        assert "duplicate" in {r["status"] for r in w.results.values()}, why
        assert 200 in w.put_statuses.values(), f"{why}: {w.put_statuses}"

        # every hazard and inspection exactly once, and nothing else new
        with w.server.engine.connect() as conn:
            def q(sql: str, ids: list[str]) -> list:
                return conn.execute(sa.text(sql).bindparams(sa.bindparam("ids", expanding=True)), {"ids": ids}).all()

            hz_rows = q("SELECT id, count(*) FROM hazards WHERE id IN :ids GROUP BY id", hz_ids)
            in_rows = q("SELECT id, count(*) FROM inspections WHERE id IN :ids GROUP BY id",
                        [i["id"] for i in inspections])
            n_hazards = conn.execute(sa.text("SELECT count(*) FROM hazards")).scalar_one()
            n_inspections = conn.execute(sa.text("SELECT count(*) FROM inspections")).scalar_one()
            refs = q("SELECT sha256, record_kind, record_id, count(*) FROM photo_refs WHERE hazard_id IN :ids "
                     "GROUP BY sha256, record_kind, record_id", hz_ids)
            blob_rows = q("SELECT sha256, size FROM blobs WHERE sha256 IN :ids", w.shas)
        assert len(hz_rows) == len(hazards) and {n for _, n in hz_rows} == {1}, f"{why}: hazards {hz_rows}"
        assert len(in_rows) == len(inspections) and {n for _, n in in_rows} == {1}, f"{why}: inspections {in_rows}"
        assert n_hazards == w.hazards_before + len(hazards), f"{why}: {n_hazards} hazards"
        assert n_inspections == w.inspections_before + len(inspections), f"{why}: {n_inspections} inspections"
        want_refs = {(s, "hazard", h["id"]) for h in hazards for s in h["photos"]}
        assert {(s, k, r) for s, k, r, _ in refs} == want_refs and {n for *_, n in refs} == {1}, f"{why}: {refs}"

        # every photo stored once, byte for byte; nothing half-written left anywhere in the store
        assert sorted(blob_rows) == sorted((s, len(p)) for s, p in w.photos.items()), f"{why}: {blob_rows}"
        originals = sorted(p for p in w.server.blobs.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*") if p.is_file())
        assert [p.name for p in originals] == sorted(w.shas), f"{why}: {originals}"
        for p in originals:
            assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, f"{why}: {p} is not what its name says"
        deadline = time.monotonic() + 10  # an abandoned upload's worker thread removes its temp file itself
        while w.tmp_files() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert w.tmp_files() == [], f"{why}: temp files left in the blob store: {w.tmp_files()}"
        strays = [p for p in w.server.blobs.rglob("*")
                  if p.is_file() and (p.suffix == ".part" or p.name.startswith("."))]
        assert strays == [], f"{why}: {strays}"

        # through the API: each hazard has all its photos, none still waiting on the phone
        with httpx.Client(base_url=w.server.base, headers=w.headers, timeout=30) as api:
            for h in hazards:
                r = api.get(f"/api/v1/hazards/{h['id']}")
                assert r.status_code == 200, f"{why}: {r.status_code} {r.text[:300]}"
                d = r.json()
                assert d["photos_pending"] == [], f"{why}: hazard {h['id']} waits for {d['photos_pending']}"
                assert sorted(d["photos"]) == sorted(h["photos"]), f"{why}: {h['id']}: {d['photos']}"
            for sha, data in w.photos.items():
                r = api.get(f"/api/v1/blobs/{sha}")
                assert r.status_code == 200 and r.content == data, f"{why}: GET blob {sha}: {r.status_code}"

        # the audit chain of every hazard is whole
        with Session(w.server.engine) as session:
            problems = [p for p in verify_all(session) if not isinstance(p, int)]
        assert problems == [], f"{why}: {problems}"

        # pull: every page answered once in the end, no change twice, everything the phone sent in scope
        for label, pages in (("first pull", w.first_pull), ("last pull", w.last_pull), ("news", w.news)):
            got = _pulled(pages)
            assert len(got) == len(set(got)), f"{why}: {label} sent a change twice: " \
                f"{[k for k, n in collections.Counter(got).items() if n > 1]}"
        last = set(_pulled(w.last_pull))
        assert {("hazard", i) for i in hz_ids} <= last, f"{why}: pull misses hazards"
        assert {("inspection", i["id"]) for i in inspections} <= last, f"{why}: pull misses inspections"
        direct = httpx.get(w.server.base + "/api/v1/sync/pull", params={"limit": 1000}, headers=w.headers).json()
        assert not direct["more"]
        assert last == set(_pulled([direct["changes"]])), f"{why}: the paged pull through cuts differs from one page"
        pulled_hz = {c["id"]: c["data"] for page in w.last_pull for c in page if c["type"] == "hazard"}
        for h in hazards:
            assert sorted(pulled_hz[h["id"]]["photos"]) == sorted(h["photos"]), f"{why}: pulled {h['id']}"

        # the same outbox through a proxy that cuts nothing, into a fresh database: the same end state
        clean.run()
        assert [[o["op_id"] for o in b] for b in clean.batches] == [[o["op_id"] for o in b] for b in batches]
        assert not any(o.cut for o in clean.proxy.outcomes)
        assert {r["status"] for r in clean.results.values()} == {"applied"}
        assert clean.put_statuses == {s: 201 for s in clean.shas}
        a, b = chaos.snapshot(), clean.snapshot()
        for table in a:
            assert a[table] == b[table], f"{why}: {table} differs from the clean run"
        for op_id, r in chaos.results.items():
            assert chaos.named(_stable(r["result"])) == clean.named(_stable(clean.results[op_id]["result"])), \
                f"{why}: op {op_id}: {r} against the clean run's {clean.results[op_id]}"

        print(f"\n[{backend}] seed {SEED}: {sum(phone.attempts.values())} attempts for "
              f"{len(phone.answers)} answers; cuts {dict(sorted(cuts.items()))}; the phone saw "
              f"{dict(phone.failures)}; photo cuts with a temp file on the server: "
              f"{sum(1 for o in w.proxy.outcomes if o.label == 'photo_body' and o.at_cut.get('tmp_files'))}"
              f"/{cuts['photo_body']}")
    except AssertionError as e:  # a server error's traceback is in its log: show it with the failure
        texts = {x.server.log: x.server.log.read_text(errors="replace")
                 for x in (chaos, clean) if x.server.log.exists()}
        logs = [f"--- {path} ---\n{text[-4000:]}" for path, text in texts.items() if "Traceback" in text]
        if logs:
            raise AssertionError("\n".join([str(e), *logs])) from e
        raise
    finally:
        chaos.close()
        clean.close()

