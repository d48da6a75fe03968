"""Instructions per request, counted by valgrind's callgrind: a figure that does not wander with the VM.

    .venv/bin/python -m bench.instructions [--requests 30] [--what push,put,batch]
    .venv/bin/python -m bench.instructions --root /path/to/other/checkout   # the same for another commit

The CPU-time benchmarks on the 2-CPU VM move by ±15-30 % from one run to the next (docs/PERFORMANCE.md),
which hides a change worth 5-10 %. Callgrind counts the server's user-space instructions instead: the
same code gives the same count within ~0.5 %, whatever else the machine does. It misses what the kernel
does for the process (file and socket I/O, fsync, futex wake-ups), and an instruction is not a fixed
time, so it ranks changes of the Python side; the HTTP benchmarks still give the speed.

One uvicorn worker (the ASGI app `firegrid serve` runs, access log on) under callgrind, with counting
off while it starts. A few untimed submissions warm it up, then counting is switched on for:
- push: a push of one `inspection.submit` op with one hazard naming one photo (a phone syncing each
  inspection as it is made);
- put: the PUT of a ~300 KB photo (bench/submission_bench.py's);
- batch: a push of 100 ops with 2 hazards each (bench/push_bench.py's batch), per op;
- pull: an incremental pull with nothing new (a phone checking for news), after a full pull.
Needs Debian's `valgrind`. About a minute per kind of request; nothing is asserted. Hashing is shown
apart: valgrind's CPU lacks the SHA extensions, so under it sha256 costs ~10x what it costs here.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import json as jsonlib

from bench.common import markdown_table
from bench.phone import Phone
from bench.photo_bench import distinct_jpegs
from bench.push_bench import WORKERS, batch, places_of
from bench.server import FIREGRID, ROOT, free_port, stop, token, wait_until_up
from bench.submission_bench import PHOTO_SIZE, push, put_photo, submission_op

BATCH_OPS = 100


def ok(answer: tuple[int, object]) -> object:
    if answer[0] != 200:
        raise RuntimeError(f"{answer[0]}: {str(answer[1])[:300]}")
    return answer[1]


def count(root: Path, what: str, n: int) -> tuple[float, float]:
    """Instructions the server spent per request of this kind (per op for batch, of n // 5 batches), and
    how many of those were sha256."""
    if what == "batch":
        n = max(2, n // 5)  # 100 ops each: a fifth as many batches
    tmp = Path(tempfile.mkdtemp(prefix="fg-instr-"))
    env = {**os.environ, "PYTHONPATH": str(root), "FIREGRID_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
           "FIREGRID_STORAGE_DIR": str(tmp / "blobs"), "FIREGRID_SWEEP_INTERVAL_SECONDS": "0",
           "MALLOC_ARENA_MAX": "2", "PYTHONHASHSEED": "0"}
    for cmd in (["migrate"], ["seed-demo"]):
        subprocess.run([FIREGRID, *cmd], env=env, cwd=tmp, check=True, capture_output=True)
    photos = distinct_jpegs(n + 3, *PHOTO_SIZE)
    out = tmp / "callgrind.out"
    port = free_port()
    with open(tmp / "server.log", "wb") as log:
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                                 sys.executable, "-P", "-m", "uvicorn", "app.asgi:app", "--port", str(port)],
                                env=env, cwd=tmp, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_up(base + "/healthz", proc, timeout=900):
            raise SystemExit("server did not start under valgrind: see " + str(tmp / "server.log"))
        headers = token(base, WORKERS[0], "instr-phone")
        places = places_of(base, headers)
        c = Phone(base, headers, timeout=900)
        try:
            subs = [(submission_op(places[k % len(places)], hashlib.sha256(p).hexdigest()), p)
                    for k, p in enumerate(photos)]
            for op, photo in subs[-3:]:  # warm-up, not counted: first use of each path, pools, Pillow's plugins
                push(c, [op])
                put_photo(c, photo)
            if what == "batch":
                ok(c.post_json("/api/v1/sync/push", batch(places, BATCH_OPS)))
            batches = [batch(places, BATCH_OPS) for _ in range(n)] if what == "batch" else []
            cursor = None
            if what == "pull":  # the whole scope first, untimed, then the same question again and again
                more = True
                while more:
                    page = jsonlib.loads(ok(c.request("GET", "/api/v1/sync/pull" + (f"?cursor={quote(cursor)}" if cursor else ""))))
                    cursor, more = page["cursor"], page["more"]
            subprocess.run(["callgrind_control", "--instr=on", str(proc.pid)], check=True, capture_output=True)
            for i in range(n):
                if what == "batch":
                    ok(c.post_json("/api/v1/sync/push", batches[i]))
                elif what == "push":
                    push(c, [subs[i][0]])
                elif what == "pull":
                    ok(c.request("GET", f"/api/v1/sync/pull?cursor={quote(cursor)}"))
                else:  # the PUT path does not look at the photo's record: the photos alone
                    put_photo(c, subs[i][1])
            for cmd in ("--instr=off", "--dump"):  # off first: the shutdown must not be counted
                subprocess.run(["callgrind_control", cmd, str(proc.pid)], check=True, capture_output=True)
        finally:
            c.close()
    finally:
        stop(proc)
    per = n * (BATCH_OPS if what == "batch" else 1)
    dumps = list(tmp.glob("callgrind.out*"))
    total = sum(int(line.split()[1]) for f in dumps for line in open(f, errors="replace") if line.startswith("totals:"))
    return total / per, sum(_hashing(f) for f in dumps) / per


def _hashing(dump: Path) -> int:
    """Instructions in libcrypto (sha256): valgrind's CPU has no SHA extensions, so OpenSSL hashes there
    with plain instructions, ~10x what the machine itself spends; reported apart so they hide nothing."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", str(dump)], capture_output=True, text=True).stdout
    return sum(int(line.split()[0].replace(",", "")) for line in text.splitlines()
               if "libcrypto" in line and line.strip()[:1].isdigit())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=30, help="counted requests of each kind")
    ap.add_argument("--what", default="push,put,batch,pull", help="comma-separated: push, put, batch, pull")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose code the server runs")
    args = ap.parse_args()
    rows = []
    for what in args.what.split(","):
        per, hashing = count(args.root.resolve(), what, args.requests)
        rows.append((what, args.requests, f"{per / 1e6:.2f}", f"{hashing / 1e6:.2f}", f"{(per - hashing) / 1e6:.2f}"))
        print(f"{what}: {per / 1e6:.2f} M instructions, {hashing / 1e6:.2f} M of them sha256", flush=True)
    print(f"\n{args.root.resolve()}, 1 worker under callgrind, SQLite\n")
    print(markdown_table(["request", "counted", "M instructions per request (batch: per op)", "of which sha256",
                          "the rest"], rows))


if __name__ == "__main__":
    main()
