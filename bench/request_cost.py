"""Server CPU per request, by kind: what each request a phone makes costs one worker, one request at a time.

    .venv/bin/python -m bench.request_cost [--requests 300] [--rounds 3]

One worker (`firegrid serve --workers 1`, SQLite, the demo data), one client sending one request at a time,
so that the worker's CPU clock (every thread, user and system) between two answers is that request's
cost alone. Kinds, from the cheapest: `/healthz` (uvicorn, the middleware, the routing and the access
log: what every request pays), `GET /api/v1/me` (that plus the bearer token's check in a session and a
worker-thread hop: what every authenticated request pays), an incremental pull with nothing new (a
phone asking for news), a push of one `inspection.submit` op with one hazard naming one photo, and the
PUT of that ~300 KB photo (bench/submission_bench.py's submission, sent one by one). The kinds take
turns in rounds, so a slow phase of the VM (docs/PERFORMANCE.md) falls on all of them; the table gives
each kind's median over the rounds and their range. It says where a one-by-one submission's CPU goes;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics

import httpx

from bench.common import markdown_table
from bench.photo_bench import distinct_jpegs, server_cpu, worker_pids
from bench.push_bench import WORKERS, places_of
from bench.server import running_server, token
from bench.submission_bench import PHOTO_SIZE, submission_op


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="requests of each kind per round")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    warmup = 20
    photos = iter(distinct_jpegs(a.requests * a.rounds + warmup, *PHOTO_SIZE))
    with running_server(workers=1) as (base, proc, _env):
        headers = token(base, WORKERS[0], "request-cost-phone")
        place = places_of(base, headers)[0]
        pids = worker_pids(proc.pid) or [proc.pid]
        c = httpx.Client(base_url=base, headers=headers, timeout=60)
        cursor: str | None = None

        def catch_up() -> str:
            """The cursor after everything so far (untimed): the timed pulls then find nothing new."""
            page = c.get("/api/v1/sync/pull", params={"cursor": cursor} if cursor else {}).json()
            while page["more"]:
                page = c.get("/api/v1/sync/pull", params={"cursor": page["cursor"]}).json()
            return page["cursor"]

        def expect(r: httpx.Response, status: int) -> httpx.Response:
            if r.status_code != status:
                raise SystemExit(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
            return r

        def submission() -> tuple[float, float]:
            """A push of one op, then the PUT of its photo: the worker's CPU for each."""
            photo = next(photos)
            sha = hashlib.sha256(photo).hexdigest()
            c0 = server_cpu(pids)
            r = expect(c.post("/api/v1/sync/push", content=json.dumps({"ops": [submission_op(place, sha)]}).encode(),
                              headers={"Content-Type": "application/json"}), 200)
            if r.json()["results"][0]["status"] != "applied":
                raise SystemExit(f"push: {r.text[:300]}")
            c1 = server_cpu(pids)
            expect(c.put(f"/api/v1/blobs/{sha}", content=photo, headers={"Content-Type": "image/jpeg"}), 201)
            return c1 - c0, server_cpu(pids) - c1

        simple = {
            "GET /healthz": lambda: expect(c.get("/healthz"), 200),
            "GET /api/v1/me": lambda: expect(c.get("/api/v1/me"), 200),
            "pull, nothing new": lambda: expect(c.get("/api/v1/sync/pull", params={"cursor": cursor}), 200),
        }
        cursor = catch_up()
        for _ in range(warmup):
            for fn in simple.values():
                fn()
            submission()
        per_round: dict[str, list[float]] = {k: [] for k in (*simple, "push of 1 op", "PUT of a ~300 KB photo")}
        for _ in range(a.rounds):
            cursor = catch_up()
            for name, fn in simple.items():
                c0 = server_cpu(pids)
                for _ in range(a.requests):
                    fn()
                per_round[name].append((server_cpu(pids) - c0) / a.requests)
            pushes = puts = 0.0
            for _ in range(a.requests):
                p, u = submission()
                pushes, puts = pushes + p, puts + u
            per_round["push of 1 op"].append(pushes / a.requests)
            per_round["PUT of a ~300 KB photo"].append(puts / a.requests)
        c.close()
    print(f"\none worker, one request at a time, {a.rounds} rounds of {a.requests} of each kind; worker CPU ms "
          "per request\n")
    print(markdown_table(["request", "median ms", "range over rounds"],
                         [(k, statistics.median(v) * 1000, f"{min(v) * 1000:.2f}-{max(v) * 1000:.2f}")
                          for k, v in per_round.items()]))


if __name__ == "__main__":
    main()
