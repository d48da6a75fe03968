"""Where one push batch goes, in-process: the phases of POST /api/v1/sync/push and each table's INSERT.

    .venv/bin/python -m bench.push_phases [--batches 40] [--batch-size 100] [--pages]

Builds a throw-away SQLite database (migrate + seed-demo), then runs batches of `inspection.submit`
ops with 2 hazards each (the push benchmark's) through the same calls the endpoint makes: plan on a
read transaction, then write and commit under the write lock. Prints wall and CPU (thread time)
per batch for each phase, and the time SQLite spends in each table's INSERT. Single-threaded, so
it shows the work itself, not the contention of bench/push_bench.py. Never asserts on time.

--pages: also which tables and indexes the last batch's commit wrote pages of, read from the WAL
frames it appended (SQLite's dbstat names each page's b-tree): what a commit costs is the pages.
"""

import argparse
import collections
import os
import sqlite3
import struct
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from bench.common import markdown_table
from bench.push_bench import batch
from bench.server import FIREGRID


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--pages", action="store_true", help="which b-trees the last batch's commit wrote")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fg-push-phases-"))
    os.environ.update(FIREGRID_DATABASE_URL=f"sqlite:///{tmp / 'bench.db'}", FIREGRID_STORAGE_DIR=str(tmp / "blobs"))
    for cmd in (["migrate"], ["seed-demo"]):
        subprocess.run([FIREGRID, *cmd], check=True, capture_output=True, cwd=tmp)

    from sqlmodel import select

    from app.auth.models import Device, User
    from app.auth.scope import scope_for
    from app.config import Settings
    from app.db import Database
    from app.places.models import Place
    from app.referrals.policy import DEFAULT_POLICY_PATH, load_policy
    from app.referrals.service import Rules, load_calendar
    from app.sync import health, service
    from app.sync.schemas import PushRequest

    db = Database.from_settings(Settings())
    policy = load_policy(DEFAULT_POLICY_PATH)
    with db.session() as s:
        user = s.exec(select(User).where(User.username == "worker-a1")).one()
        scope = scope_for(s, user)
        places = [p.id for p in s.exec(select(Place)).all() if scope.sees_place(p)]
    with db.session(write=True) as s:
        device = Device(user_id=user.id, device_key="bench-phases", name="bench")
        s.add(device)
        s.commit()

    insert_s: collections.Counter = collections.Counter()
    insert_rows: collections.Counter = collections.Counter()

    @sa.event.listens_for(db.engine, "before_cursor_execute")
    def _start(conn, cursor, statement, params, context, many):
        conn.info["t0"] = time.perf_counter()

    @sa.event.listens_for(db.engine, "after_cursor_execute")
    def _end(conn, cursor, statement, params, context, many):
        if statement.startswith("INSERT INTO"):
            table = statement.split()[2]
            insert_s[table] += time.perf_counter() - conn.info["t0"]
            insert_rows[table] += len(params) if many else 1

    wall: collections.Counter = collections.Counter()
    cpu: collections.Counter = collections.Counter()

    def one(body: dict) -> None:
        marks = [(time.perf_counter(), time.thread_time())]

        def mark():
            marks.append((time.perf_counter(), time.thread_time()))

        req = PushRequest.model_validate(body)
        with db.session() as s:
            now = datetime.now(timezone.utc)
            ctx = service.PushContext(session=s, rules=Rules(policy=policy, calendar=load_calendar(s)), scope=scope,
                                      user=user, device=device, now=now)
            mark()
            plan = service.plan_push(ctx, req.ops)
            s.commit()
            mark()
            with db.session(write=True) as w:
                w.info["origin_device_id"] = device.id
                results = service.apply_push(ctx, req.ops, plan, w)
                health.record_push(w, device.id, now, 0, None)
                mark()
                w.commit()
                mark()
        if any(r.status != "applied" for r in results):
            raise SystemExit(f"an op was not applied: {next(r for r in results if r.status != 'applied')}")
        for name, (t0, c0), (t1, c1) in zip(("parse + context", "plan (read transaction)", "write (under the lock)",
                                              "commit + change feed (under the lock)"), marks, marks[1:]):
            wall[name] += t1 - t0
            cpu[name] += c1 - c0

    for _ in range(3):  # warm-up: caches, compiled statements
        one(batch(places, a.batch_size))
    wall.clear(), cpu.clear(), insert_s.clear(), insert_rows.clear()
    bodies = [batch(places, a.batch_size) for _ in range(a.batches)]
    for i, body in enumerate(bodies):
        if a.pages and i == len(bodies) - 1:
            with sqlite3.connect(tmp / "bench.db") as side:  # empty the WAL: the last commit's frames are all of it
                side.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        one(body)
    n = a.batches
    rows = [[k, wall[k] / n * 1000, cpu[k] / n * 1000] for k in wall]
    rows.append(["total", sum(wall.values()) / n * 1000, sum(cpu.values()) / n * 1000])
    print(f"{n} batches of {a.batch_size} inspection.submit ops (2 hazards each), SQLite, one thread; ms per batch\n")
    print(markdown_table(["phase", "wall ms", "CPU ms"], rows))
    print()
    print(markdown_table(["INSERT into", "rows per batch", "ms per batch (in SQLite)"],
                         [[t, insert_rows[t] // n, insert_s[t] / n * 1000] for t, _ in insert_s.most_common()]))
    if a.pages:
        print()
        print(written_pages(tmp / "bench.db"))
    subprocess.run(["rm", "-rf", str(tmp)], check=False)


def written_pages(path: Path) -> str:
    """The b-trees whose pages the WAL holds, by frame: one batch's commit when the WAL was emptied before it."""
    with sqlite3.connect(path) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        wal = (path.parent / (path.name + "-wal")).read_bytes()
        frame = 24 + page_size
        pages = [struct.unpack(">I", wal[off:off + 4])[0] for off in range(32, len(wal) - frame + 1, frame)]
        owner = dict(conn.execute("SELECT pageno, name FROM dbstat"))
    counts = collections.Counter(owner.get(p, "(free)") for p in pages)
    return (f"the last batch's commit wrote {len(pages)} pages ({len(pages) * page_size / 2**20:.1f} MiB of WAL):\n\n"
            + markdown_table(["b-tree (table or index)", "pages"], counts.most_common()))


if __name__ == "__main__":
    main()
