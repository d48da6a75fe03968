"""Push throughput against a running server (uvicorn, 2 workers): batches of 100 `inspection.submit`
ops with 2 hazards each, from 4 concurrent phones, on SQLite and PostgreSQL.

    .venv/bin/python -m bench.push_bench [--backend sqlite|postgresql|both] [--batches 160] [--clients 4] [--workers 2]

160 batches (16,000 ops, ~10 s): a 40-batch run lasted 2 s and mostly measured the start (cold page
caches, a WAL still small) on a machine whose speed wanders.

Prints ops/s (and hazards/s); never asserts on time.
"""

import argparse
import collections
import contextlib
import json
import re
import subprocess
import statistics
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx

from bench.common import markdown_table
from bench.server import pg_schema, running_server, token

CN = timezone(timedelta(hours=8))
WORKERS = ["worker-a1", "worker-a2", "worker-b1"]


def places_of(base: str, headers: dict) -> list[str]:
    r = httpx.get(base + "/api/v1/places", params={"limit": 200}, headers=headers, timeout=30)
    r.raise_for_status()
    return [p["id"] for p in r.json()["items"]]


def batch(place_ids: list[str], n: int) -> dict:
    now = datetime.now(CN)
    ops = []
    for i in range(n):
        place = place_ids[i % len(place_ids)]
        hz = [{"id": str(uuid.uuid4()), "place_id": place, "category": cat, "severity": "general", "violation": False,
               "description": "楼道堆放杂物，电动车充电", "found_at": (now - timedelta(minutes=5)).isoformat(), "photos": []}
              for cat in ("ebike_indoor", "blocked_exit")]
        ops.append({"op_id": str(uuid.uuid4()), "type": "inspection.submit", "data": {
            "id": str(uuid.uuid4()), "place_id": place, "started_at": (now - timedelta(minutes=20)).isoformat(),
            "finished_at": (now - timedelta(minutes=2)).isoformat(), "lat": 29.35, "lon": 105.92,
            "checklist": [{"item": "ebike_indoor", "result": "fail", "note": ""},
                          {"item": "blocked_exit", "result": "fail", "note": ""},
                          {"item": "missing_alarm_extinguisher", "result": "pass", "note": ""}],
            "hazards": hz}})
    return {"ops": ops}


def connection_split(base: str) -> str:
    """How many of the open client connections each server process holds, e.g. "2+2" (from ss -tnp)."""
    port = base.rsplit(":", 1)[1]
    try:
        out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    per_pid = collections.Counter(re.findall(r"pid=(\d+)", out))
    return "+".join(str(n) for n in sorted(per_pid.values(), reverse=True)) or "?"


def run(backend: str, batches: int, clients: int, batch_size: int, workers: int = 2) -> dict:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(pg_schema("bench_push")) if backend == "postgresql" else None
        with running_server(url, workers=workers) as (base, _proc, _env):
            phones = []
            for i in range(clients):
                user = WORKERS[i % len(WORKERS)]
                h = token(base, user, f"bench-phone-{i}")
                phones.append((h, places_of(base, h)))
            # encoded before the clock starts: a phone's JSON encoding is not the server's work, and in one
            # client process it held the GIL the other phones needed to keep their worker busy
            bodies = [[json.dumps(batch(places, batch_size)).encode() for _ in range(batches // clients)]
                      for _, places in phones]
            # one untimed full batch per phone (each on a new connection, so both workers usually get some):
            # pools, page caches and compiled statements warm before the clock starts
            for headers, places in phones:
                warm = batch(places, batch_size)
                httpx.post(base + "/api/v1/sync/push", json=warm, headers=headers, timeout=120).raise_for_status()
            latencies: list[float] = []
            errors: list[str] = []
            # each phone's keep-alive connection, opened before the clock starts, stays with the worker
            # that accepted it: how they split over the workers (2+2 or 3+1) is worth knowing per run
            conns = [httpx.Client(base_url=base, headers=h, timeout=120) for h, _ in phones]
            for c in conns:
                c.get("/healthz").raise_for_status()
            split = connection_split(base)

            done_at: list[float] = [0.0] * clients

            def phone(i: int) -> None:
                c = conns[i]
                try:
                    for body in bodies[i]:
                        sent = time.perf_counter()
                        r = c.post("/api/v1/sync/push", content=body, headers={"Content-Type": "application/json"})
                        latencies.append(time.perf_counter() - sent)
                        if r.status_code != 200 or any(x["status"] != "applied" for x in r.json()["results"]):
                            errors.append(r.text[:300])
                finally:
                    done_at[i] = time.perf_counter() - started
                    c.close()

            threads = [threading.Thread(target=phone, args=(i,)) for i in range(clients)]
            started = t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
            n_ops = len(bodies) * (batches // clients) * batch_size
            if errors:
                raise SystemExit(f"{len(errors)} batches failed, first: {errors[0]}")
            return {"backend": backend, "split": split, "done": " / ".join(f"{d:.1f}" for d in sorted(done_at)),
                    "ops": n_ops, "seconds": elapsed, "ops_s": n_ops / elapsed,
                    "hazards_s": 2 * n_ops / elapsed, "batch_median_ms": statistics.median(latencies) * 1000,
                    "batch_max_ms": max(latencies) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--batches", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    backends = ["sqlite", "postgresql"] if a.backend == "both" else [a.backend]
    rows = []
    for b in backends:
        r = run(b, a.batches, a.clients, a.batch_size, a.workers)
        rows.append([r["backend"], r["split"], r["done"], r["ops"], r["seconds"], r["ops_s"], r["hazards_s"], r["batch_median_ms"], r["batch_max_ms"]])
    print(markdown_table(["backend", "connections per worker", "phones done at (s)", "ops", "seconds", "ops/s", "hazards/s", "batch median ms", "batch max ms"], rows))


if __name__ == "__main__":
    main()
