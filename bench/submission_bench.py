"""Submissions with a photo against a running server (2 workers; SQLite, or PostgreSQL with --backend): the issue's comparison
with the reference server, which took 93 submissions/s with one 300 KB photo each (4 clients) and peaked
at 472 MB.

    .venv/bin/python -m bench.submission_bench [--submissions 400] [--clients 4] [--workers 2] [--backend postgresql]

A submission is one `inspection.submit` op with one hazard whose record names one ~300 KB JPEG, and
that photo. Two ways of sending them, 4 phones each time, every photo distinct:

- **one by one**, as the reference server takes them: per submission a push of that one op, then the
  PUT of its photo (two requests);
- **as a phone syncs after a walk** (the PWA's way): pushes of 50 ops, then the 50 photos.

Afterwards the database is checked: every hazard is there once and no photo is still missing. Prints
submissions/s, the server's CPU per submission and the workers' peak memory; never asserts on time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from bench.common import markdown_table, run_together
from bench.phone import Phone
from bench.photo_bench import SETTLED_US, RssSampler, creation_cost_us, distinct_jpegs, server_cpu, settle, warm_memory, worker_pids
from bench.push_bench import WORKERS, places_of
from bench.server import pg_schema, running_server, token

CN = timezone(timedelta(hours=8))
PHOTO_SIZE = (1120, 840)  # photo-like JPEG at q88: ~300 KB, the reference's photo
SYNC_BATCH = 50
MB = 1024 * 1024


def submission_op(place_id: str, sha: str) -> dict:
    now = datetime.now(CN)
    return {"op_id": str(uuid.uuid4()), "type": "inspection.submit", "data": {
        "id": str(uuid.uuid4()), "place_id": place_id, "started_at": (now - timedelta(minutes=15)).isoformat(),
        "finished_at": (now - timedelta(minutes=1)).isoformat(), "lat": 29.35, "lon": 105.92,
        "checklist": [{"item": "ebike_indoor", "result": "fail", "note": ""}],
        "hazards": [{"id": str(uuid.uuid4()), "place_id": place_id, "category": "ebike_indoor", "severity": "general",
                     "violation": False, "description": "楼道内电动车充电", "found_at": (now - timedelta(minutes=5)).isoformat(),
                     "photos": [sha]}]}}


def push(c: Phone, ops: list[dict]) -> None:
    status, body = c.post_json("/api/v1/sync/push", {"ops": ops})
    if status != 200 or any(x["status"] != "applied" for x in body["results"]):
        raise RuntimeError(f"push: {status} {str(body)[:300]}")


def put_photo(c: Phone, photo: bytes) -> None:
    status, body = c.request("PUT", f"/api/v1/blobs/{hashlib.sha256(photo).hexdigest()}", photo, "image/jpeg")
    if status != 201:
        raise RuntimeError(f"photo: {status} {body[:300]!r}")


def one_by_one(c: Phone, work: list[tuple[dict, bytes]]) -> None:
    for op, photo in work:
        push(c, [op])
        put_photo(c, photo)


def as_a_phone_syncs(c: Phone, work: list[tuple[dict, bytes]]) -> None:
    for i in range(0, len(work), SYNC_BATCH):
        chunk = work[i:i + SYNC_BATCH]
        push(c, [op for op, _ in chunk])
        for _, photo in chunk:
            put_photo(c, photo)


def run(mode, conns: list[Phone], work: list[list[tuple[dict, bytes]]], pids: list[int], master: int) -> dict:
    errors: list[str] = []

    def phone(i: int) -> None:
        try:
            mode(conns[i], work[i])
        except Exception as exc:  # reported after the run; the clock is not the judge of errors
            errors.append(str(exc))

    cpu0, client0 = server_cpu(pids), time.process_time()
    with RssSampler(pids, master=master) as mem:
        elapsed = run_together([threading.Thread(target=phone, args=(i,)) for i in range(len(conns))])
    if errors:
        raise SystemExit(f"{len(errors)} phones failed, first: {errors[0]}")
    n = sum(len(w) for w in work)
    return {"n": n, "per_s": n / elapsed, "cpu_ms": (server_cpu(pids) - cpu0) * 1000 / n,
            "client_ms": (time.process_time() - client0) * 1000 / n,
            "rss": mem.peak_sum / MB, "pss": mem.peak_pss / MB, "total_pss": mem.peak_total_pss / MB}


def hazard_count(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as db:
            return db.execute(sa.text("SELECT count(*) FROM hazards")).scalar_one()
    finally:
        engine.dispose()


def check_database(url: str, expected_new: int, before: int) -> None:
    """Every submission's hazard stored once, and no photo still 'on the phone'."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as db:
            new = db.execute(sa.text("SELECT count(*) FROM hazards")).scalar_one() - before
            pending = db.execute(sa.text("SELECT count(*) FROM photo_refs r LEFT JOIN blobs b ON b.sha256 = r.sha256 "
                                         "WHERE b.sha256 IS NULL")).scalar_one()
    finally:
        engine.dispose()
    if new != expected_new or pending:
        raise SystemExit(f"database check failed: {new} new hazards for {expected_new} submissions, "
                         f"{pending} photos missing")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--submissions", type=int, default=400, help="per way of sending")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite",
                    help="postgresql: a throwaway schema in bench.common.DEFAULT_PG_URL (its own CPU is not in "
                         "the server CPU column)")
    ap.add_argument("--settle", type=float, default=600, metavar="SECONDS",
                    help="wait at most this long for new files to be cheap again (bench.photo_bench.creation_cost_us)")
    args = ap.parse_args()

    print(f"making {2 * args.submissions} distinct ~300 KB JPEGs ...", flush=True)
    photos = distinct_jpegs(2 * args.submissions + args.clients, *PHOTO_SIZE)
    warm_memory(2.0)  # as bench/photo_bench.py: no phase pays for the VM's first use of a page
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(pg_schema("bench_submit")) if args.backend == "postgresql" else None
        base, proc, env = stack.enter_context(running_server(url, workers=args.workers))
        time.sleep(1.0)  # the second worker finishes starting
        pids = worker_pids(proc.pid)
        db_url = env["FIREGRID_DATABASE_URL"]
        before = hazard_count(db_url)  # the demo's own
        phones = []
        for i in range(args.clients):
            h = token(base, WORKERS[i % len(WORKERS)], f"bench-phone-{i}")
            phones.append((h, places_of(base, h)))
        conns = [Phone(base, h) for h, _ in phones]
        # warm-up, untimed: one submission per phone (each worker's pools, Pillow's plugins)
        for (_, places), c, photo in zip(phones, conns, photos[-args.clients:]):
            one_by_one(c, [(submission_op(places[0], hashlib.sha256(photo).hexdigest()), photo)])

        def work_for(batch: list[bytes]) -> list[list[tuple[dict, bytes]]]:
            per = len(batch) // args.clients
            return [[(submission_op(places[k % len(places)], hashlib.sha256(p).hexdigest()), p)
                     for k, p in enumerate(batch[i * per:(i + 1) * per])] for i, (_, places) in enumerate(phones)]

        probe = Path(env["FIREGRID_STORAGE_DIR"]).parent / "probe"  # beside the blobs: their block group, as near as we can tell
        create_before, waited = settle(probe, args.settle)
        first = work_for(photos[:args.submissions])
        second = work_for(photos[args.submissions:2 * args.submissions])
        results = [("one by one (push 1 op, PUT its photo)", run(one_by_one, conns, first, pids, proc.pid)),
                   (f"as a phone syncs (push {SYNC_BATCH} ops, PUT {SYNC_BATCH} photos)",
                    run(as_a_phone_syncs, conns, second, pids, proc.pid))]
        create_after = creation_cost_us(probe)
        for c in conns:
            c.close()
        check_database(db_url, args.clients + sum(r["n"] for _, r in results), before)

    mean_kb = sum(len(p) for p in photos) / len(photos) / 1024
    print(f"\n{args.clients} phones, {args.workers} workers, {'PostgreSQL' if args.backend == 'postgresql' else 'SQLite'}; photos {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG, "
          f"mean {mean_kb:.0f} KB; every hazard stored once, no photo missing; a new empty file cost "
          f"{create_before:.0f} µs of CPU before (after waiting {waited:.0f} s) and {create_after:.0f} µs after"
          + (" -- NOT SETTLED, see bench.photo_bench.creation_cost_us" if max(create_before, create_after) > SETTLED_US else "")
          + "\n")
    print(markdown_table(["way of sending", "submissions", "submissions/s", "server CPU per submission ms",
                          "phones' CPU per submission ms",
                          "peak RSS MB (workers)", "peak PSS MB (workers)", "peak PSS MB (whole server)"],
                         [(name, r["n"], r["per_s"], r["cpu_ms"], r["client_ms"], r["rss"], r["pss"], r["total_pss"])
                          for name, r in results]))


if __name__ == "__main__":
    main()
