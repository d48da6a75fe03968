"""Incremental pull latency for a grid worker with 1,000,000 hazards in the database, against a
running server (uvicorn, 2 workers), on SQLite and PostgreSQL.

    .venv/bin/python -m bench.pull_bench [--hazards 1000000] [--backend sqlite|postgresql|both] [--keep]

The database is the queue benchmark's (bench/queue_bench.py: 100 towns, 10 grids each), reused when
--keep finds one; every hazard also gets its change-feed row, as if each had synced. A second phone
of the same worker reports a hazard in the grid (untimed), then the measured phone pulls from its
cursor: the figure is one incremental pull that brings one new hazard. Prints median and p95.
"""

import argparse
import statistics
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import httpx
import sqlalchemy as sa

from bench import queue_bench
from bench.common import DEFAULT_PG_URL, markdown_table, percentile
from bench.server import FIREGRID, running_server, token

CN = timezone(timedelta(hours=8))


def fill_feed(engine: sa.Engine) -> None:
    """One change row per hazard, made in SQL (the feed normally fills as records sync)."""
    with engine.begin() as conn:
        have = conn.execute(sa.text("SELECT count(*) FROM changes WHERE entity_type = 'hazard'")).scalar()
        if have:
            return
        pg = engine.dialect.name == "postgresql"
        obj = "json_build_object" if pg else "json_object"
        t0 = time.perf_counter()
        conn.execute(sa.text(f"""
            INSERT INTO changes (entity_type, entity_id, grid_id, town_id, holder_unit_id, deleted, changed_at, data)
            SELECT 'hazard', id, grid_id, town_id, holder_unit_id, {'false' if pg else '0'}, created_at,
                   {obj}('id', id, 'place_id', place_id, 'category', category, 'severity', severity,
                         'status', status, 'tier', tier, 'holder_org_unit_id', holder_unit_id,
                         'next_due', next_due, 'ack_due', ack_due, 'description', description)
            FROM hazards ORDER BY created_at"""))
        print(f"  feed filled in {time.perf_counter() - t0:.0f} s", flush=True)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE changes"))


def run(backend: str, args) -> list:
    qargs = SimpleNamespace(hazards=args.hazards, towns=100, db_dir=args.db_dir, pg_url=args.pg_url,
                            pg_schema=args.pg_schema, keep=True, seed=3, revision="head")
    be, engine, world = queue_bench.prepare(backend, qargs)
    try:
        fill_feed(engine)
        town = world.towns[7]
        grid = next(iter(town.communities.values()))[0]
        with engine.connect() as conn:
            grid_code = conn.execute(sa.text("SELECT code FROM org_units WHERE id = :g"), {"g": grid}).scalar()
            place_id = conn.execute(sa.text("SELECT id FROM places WHERE grid_id = :g LIMIT 1"), {"g": grid}).scalar()
            in_grid = conn.execute(sa.text("SELECT count(*) FROM hazards WHERE grid_id = :g"), {"g": grid}).scalar()
        engine.dispose()
        with running_server(be.url, workers=2, seed=False) as (base, _proc, env):
            user = f"bench-w-{uuid.uuid4().hex[:6]}"
            subprocess.run([FIREGRID, "user", "create", user, "--role", "grid_worker", "--unit", grid_code,
                            "--password", "firegrid-demo"], env=env, check=True, capture_output=True)
            reader, writer = token(base, user, "phone-read"), token(base, user, "phone-write")
            with httpx.Client(base_url=base, timeout=60) as c:
                t0 = time.perf_counter()
                cursor, pages = None, 0
                while True:  # the first, whole-scope pull
                    page = c.get("/api/v1/sync/pull", params={"limit": 1000, **({"cursor": cursor} if cursor else {})},
                                 headers=reader).json()
                    cursor, pages = page["cursor"], pages + 1
                    if not page["more"]:
                        break
                full = time.perf_counter() - t0
                lat, got = [], []
                for i in range(args.repeat + 10):
                    now = datetime.now(CN)
                    r = c.post("/api/v1/sync/push", headers=writer, json={"ops": [{
                        "op_id": str(uuid.uuid4()), "type": "hazard.report", "data": {
                            "id": str(uuid.uuid4()), "place_id": place_id, "category": "ebike_indoor",
                            "severity": "general", "description": "bench", "found_at": now.isoformat()}}]})
                    assert r.json()["results"][0]["status"] == "applied", r.text
                    t = time.perf_counter()
                    page = c.get("/api/v1/sync/pull", params={"cursor": cursor}, headers=reader)
                    el = time.perf_counter() - t
                    body = page.json()
                    cursor = body["cursor"]
                    if i >= 10:
                        lat.append(el)
                        got.append(len(body["changes"]))
        return [[backend, f"{args.hazards:,}", in_grid, f"{full * 1000:.0f} ms / {pages} pages",
                 statistics.median(lat) * 1000, percentile(lat, 95) * 1000, statistics.mean(got), len(lat)]]
    finally:
        if not args.keep:
            be.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hazards", type=int, default=1_000_000)
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--db-dir", default="/tmp/firegrid-bench")
    ap.add_argument("--pg-url", default=DEFAULT_PG_URL)
    ap.add_argument("--pg-schema", default="bench_queue")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the generated database")
    a = ap.parse_args()
    rows = []
    for b in (["sqlite", "postgresql"] if a.backend == "both" else [a.backend]):
        rows += run(b, a)
    print(markdown_table(["backend", "hazards in db", "hazards in the worker's grid", "first full pull",
                          "incremental pull median ms", "p95 ms", "changes per pull", "pulls"], rows))


if __name__ == "__main__":
    main()
