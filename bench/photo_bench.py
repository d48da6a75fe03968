"""Photo ingest benchmark against a real server (uvicorn, 2 workers) on a throw-away SQLite database.

    .venv/bin/python -m bench.photo_bench [--photos 200] [--clients 4] [--workers 2]

What it does, all in one run on one machine:

0. Touches and frees 2 GiB of memory (``--warm-memory-gib``), so that no measurement pays for a
   virtual machine's first use of a page (``warm_memory``).
1. ``firegrid migrate`` + ``firegrid seed-demo`` on a temp SQLite file and blob directory
   (FIREGRID_DATABASE_URL / FIREGRID_STORAGE_DIR), then ``firegrid serve --workers 2`` on a free port.
2. Makes N distinct 3-megapixel JPEGs (2048x1536, photo-like: gradients, shapes, sensor noise).
3. Floor: in this process, sha256 + write + fsync of each of the same files into the same
   filesystem (CPU time of the thread and wall time); again after step 5 and after step 7, and
   the median of the three is the floor.
4. Ingest: 4 client threads (httpx) PUT the photos; photos/s, and the server's CPU per photo
   from /proc/<pid>/stat (utime+stime of the worker processes, before/after). Peak RSS of the
   workers is sampled every 20 ms meanwhile.
5. Re-send of the same photos (already stored: 200 without reading the body).
6. First view of a thumbnail (made lazily, then cached): server CPU per thumbnail.
7. Transport floor: after Firegrid stops, the same uvicorn (same number of workers) serves
   ``bench.raw_upload_app``, a bare ASGI app that only hashes, writes, fsyncs and keeps the body; the same
   4 clients PUT the same photos. Its CPU per photo is the HTTP server's cost plus the floor.
8. A 15 MB photo (a PNG of noise, ~2250x2250 RGB, under the 15 MiB default limit) streamed
   alone, once right after warm-up (before step 3) and once more after the load: peak RSS of
   the workers (sum of VmRSS sampled every 20 ms; PSS too, which counts shared pages once).

The server runs the code of the checkout this file lives in (PYTHONPATH is set to it).
Prints a table; no assertion on timings (bench/ never fails on numbers).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw, ImageFilter

from app.cli import SERVE_ENV
from bench.common import run_together
from bench.server import free_port, stop, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PASSWORD = "firegrid-demo"


# -- processes ------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(d.name))
    return out


def worker_pids(server_pid: int) -> list[int]:
    """uvicorn's worker processes (spawned children running the app), not the resource tracker."""
    pids = []
    for pid in children(server_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"resource_tracker" not in cmd:
            pids.append(pid)
    return sorted(pids)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5), counted from 1
    return (utime + stime) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared library pages split between the processes that map them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Sum of VmRSS over the given pids every `interval` seconds; keeps the peak."""

    def __init__(self, pids: list[int], interval: float = 0.02):
        self.pids, self.interval = pids, interval
        self.peak_sum = 0
        self.peak_pss = 0
        self.peak_each = {p: 0 for p in pids}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        values = {p: rss_bytes(p) for p in self.pids}
        self.peak_sum = max(self.peak_sum, sum(values.values()))
        self.peak_pss = max(self.peak_pss, sum(pss_bytes(p) for p in self.pids))
        for p, v in values.items():
            self.peak_each[p] = max(self.peak_each[p], v)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.sample()


# -- images ---------------------------------------------------------------------------------


def photo_like_base(w: int, h: int, seed: int = 1) -> Image.Image:
    """A smooth scene with edges and fine texture: compresses like a phone photo (~1 MB at 3 MP, q88)."""
    rnd = random.Random(seed)
    grad = Image.linear_gradient("L").resize((w, h))
    im = Image.merge("RGB", (grad, grad.rotate(90).resize((w, h)), grad.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    d = ImageDraw.Draw(im)
    for _ in range(60):
        x, y = rnd.randrange(w), rnd.randrange(h)
        d.rectangle((x, y, x + rnd.randrange(40, 400), y + rnd.randrange(40, 300)),
                    fill=tuple(rnd.randrange(256) for _ in range(3)))
    noise = Image.frombytes("L", (w, h), rnd.randbytes(w * h)).filter(ImageFilter.GaussianBlur(0.6))
    return Image.blend(im, Image.merge("RGB", (noise, noise, noise)), 0.3)


def distinct_jpegs(n: int, w: int = 2048, h: int = 1536) -> list[bytes]:
    base = photo_like_base(w, h)
    out = []
    for i in range(n):
        im = base.copy()
        d = ImageDraw.Draw(im)
        rnd = random.Random(1000 + i)
        for _ in range(8):  # every photo differs in content, not just in a byte
            x, y = rnd.randrange(w - 200), rnd.randrange(h - 200)
            d.ellipse((x, y, x + rnd.randrange(20, 200), y + rnd.randrange(20, 200)),
                      fill=tuple(rnd.randrange(256) for _ in range(3)))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def noise_png(side: int, seed: int = 5) -> bytes:
    im = Image.frombytes("RGB", (side, side), random.Random(seed).randbytes(side * side * 3))
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


# -- measurements ---------------------------------------------------------------------------


def warm_memory(gib: float) -> None:
    """Touch and free ``gib`` GiB of memory before measuring.

    On a virtual machine a guest page's first use costs a fault in the host: writing 1 MB into the
    page cache cost 1.7 ms of CPU on pages never used since boot and 0.8 ms on pages used once
    (measured on the benchmark machine). A server that has run for a while reuses warm pages, so
    a fresh machine's first touches would be billed to whichever of Firegrid and the floors grew
    the page cache first. Freed pages are handed out again most-recently-freed first."""
    if gib <= 0:
        return
    block = bytearray(int(gib * (1 << 30)))
    for i in range(0, len(block), PAGE):
        block[i] = 1
    del block


def floor(photos: list[bytes], directory: Path) -> tuple[float, float]:
    """(CPU ms, wall ms) per photo of sha256 + write + fsync, in this thread."""
    directory.mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for i, data in enumerate(photos):
        hashlib.sha256(data).hexdigest()
        path = directory / f"floor-{i}"
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    for i in range(len(photos)):
        (directory / f"floor-{i}").unlink()
    return cpu * 1000 / len(photos), wall * 1000 / len(photos)


def decode_share(photos: list[bytes], directory: Path, n: int = 30) -> float:
    """CPU ms per photo of the validation alone (inspect_image: the structural check an upload gets), in this thread."""
    from app.photos.imaging import inspect_image

    path = directory / "decode-probe"
    total = 0.0
    for data in photos[:n]:
        path.write_bytes(data)
        t0 = time.thread_time()
        inspect_image(path)
        total += time.thread_time() - t0
    path.unlink()
    return total * 1000 / min(n, len(photos))


def login(base: str, device: str) -> dict:
    r = httpx.post(f"{base}/api/v1/auth/token",
                   data={"username": "worker-a1", "password": PASSWORD, "device_id": device}, timeout=30)
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def put_all(base: str, tokens: list[dict], photos: list[bytes], expect: int) -> float:
    """PUT every photo with one thread per token; returns wall seconds. Fails loudly on a wrong status."""
    q: queue.Queue[bytes] = queue.Queue()
    for p in photos:
        q.put(p)
    errors: list[str] = []

    def run(headers: dict) -> None:
        with httpx.Client(base_url=base, headers={**headers, "Content-Type": "image/jpeg"}, timeout=120) as c:
            while True:
                try:
                    data = q.get_nowait()
                except queue.Empty:
                    return
                r = c.put(f"/api/v1/blobs/{hashlib.sha256(data).hexdigest()}", content=data)
                if r.status_code != expect:
                    errors.append(f"{r.status_code} {r.text[:200]}")

    wall = run_together([threading.Thread(target=run, args=(t,)) for t in tokens])
    if errors:
        raise SystemExit(f"{len(errors)} uploads failed, e.g. {errors[0]}")
    return wall


def server_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def transport_floor(photos: list[bytes], tokens: list[dict], workers: int, tmp: Path,
                    server_env: dict[str, str]) -> tuple[float, float]:
    """(server CPU ms per photo, wall s) of the same uploads to bench.raw_upload_app on uvicorn."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    (tmp / "raw").mkdir(exist_ok=True)
    # the environment `firegrid serve` gives uvicorn (SERVE_ENV), so both servers run alike
    env = {**SERVE_ENV, **os.environ, **server_env, "RAW_UPLOAD_DIR": str(tmp / "raw"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.raw_upload_app:app", "--port", str(port),
                               "--workers", str(workers), "--log-level", "warning"], env=env, cwd=tmp,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_until_up(base + "/", server, timeout=30):
            raise SystemExit("the raw upload app did not start")
        time.sleep(1.0)
        pids = worker_pids(server.pid)
        put_all(base, tokens, photos[:8], 201)  # warm-up
        cpu0 = server_cpu(pids)
        wall = put_all(base, tokens, photos, 201)
        return (server_cpu(pids) - cpu0) * 1000 / len(photos), wall
    finally:
        stop(server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--big-side", type=int, default=2250, help="side of the noise PNG (2250 -> ~15.2 MB)")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    ap.add_argument("--warm-memory-gib", type=float, default=2.0,
                    help="touch and free this much memory first (0: measure on a cold virtual machine)")
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V",
                    help="extra environment for the server, e.g. MALLOC_ARENA_MAX=2 (repeatable)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fg-photo-bench-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FIREGRID_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
           "FIREGRID_STORAGE_DIR": str(tmp / "blobs"), "FIREGRID_ENV": "dev", "FIREGRID_SWEEP_INTERVAL_SECONDS": "0",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server_env = dict(kv.split("=", 1) for kv in args.server_env)  # the transport floor runs with it too
    env.update(server_env)
    firegrid = str(Path(sys.executable).parent / "firegrid")
    for cmd in (["migrate"], ["seed-demo"]):
        subprocess.run([firegrid, *cmd], env=env, cwd=tmp, check=True, stdout=subprocess.DEVNULL)

    print(f"warming {args.warm_memory_gib:g} GiB of memory; making {args.photos} distinct 3 MP JPEGs and a "
          f"{args.big_side}x{args.big_side} noise PNG ...", flush=True)
    warm_memory(args.warm_memory_gib)
    photos = distinct_jpegs(args.photos)
    big, big2 = noise_png(args.big_side), noise_png(args.big_side, seed=6)
    limit = 15 * 1024 * 1024
    if max(len(big), len(big2)) > limit:
        env["FIREGRID_MAX_PHOTO_BYTES"] = str(len(big) + 1)
        print(f"note: the big PNG is {len(big)} bytes, over 15 MiB: FIREGRID_MAX_PHOTO_BYTES={len(big) + 1}")

    server = subprocess.Popen([firegrid, "serve", "--port", str(port), "--workers", str(args.workers)], env=env,
                              cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "wb"))
    try:
        if not wait_until_up(f"{base}/healthz", server):
            raise SystemExit(f"server did not start, see {tmp / 'server.log'}")
        time.sleep(1.0)  # let the second worker finish starting
        pids = worker_pids(server.pid)
        assert len(pids) == args.workers, f"expected {args.workers} workers, found {pids}"

        tokens = [login(base, f"bench-{i}") for i in range(args.clients)]
        # warm-up: each worker imports Pillow's plugins and opens its DB connections on first use
        warm = distinct_jpegs(4, 640, 480)
        put_all(base, tokens, warm, 201)
        idle_rss = sum(rss_bytes(p) for p in pids)
        idle_pss = sum(pss_bytes(p) for p in pids)

        # the 15 MB photo first, on a server that has only warmed up
        with RssSampler(pids) as big_rss:
            t0 = time.perf_counter()
            r = httpx.put(f"{base}/api/v1/blobs/{hashlib.sha256(big).hexdigest()}", content=big,
                          headers={**tokens[0], "Content-Type": "image/png"}, timeout=120)
            big_wall = time.perf_counter() - t0
        if r.status_code != 201:
            raise SystemExit(f"big upload: {r.status_code} {r.text[:300]}")

        # the floor three times (before the ingest, after it, after the transport floor): one reading of
        # it swung 1.3-3.1 ms between runs, and the ratio is only as steady as its denominator
        floors = [floor(photos, tmp / "floor")]
        decode_cpu = decode_share(photos, tmp)

        cpu0 = server_cpu(pids)
        with RssSampler(pids) as load_rss:
            wall = put_all(base, tokens, photos, 201)
        ingest_cpu = (server_cpu(pids) - cpu0) * 1000 / len(photos)

        cpu0 = server_cpu(pids)
        resend_wall = put_all(base, tokens, photos, 200)
        resend_cpu = (server_cpu(pids) - cpu0) * 1000 / len(photos)
        floors.append(floor(photos, tmp / "floor"))

        n_thumbs = min(50, len(photos))
        cpu0 = server_cpu(pids)
        with httpx.Client(base_url=base, headers=tokens[0], timeout=60) as c:
            t0 = time.perf_counter()
            for data in photos[:n_thumbs]:
                r = c.get(f"/api/v1/blobs/{hashlib.sha256(data).hexdigest()}/thumb")
                r.raise_for_status()
            thumb_wall = (time.perf_counter() - t0) * 1000 / n_thumbs
        thumb_cpu = (server_cpu(pids) - cpu0) * 1000 / n_thumbs

        with RssSampler(pids) as big_after_rss:  # another 15 MB photo, after the load
            r = httpx.put(f"{base}/api/v1/blobs/{hashlib.sha256(big2).hexdigest()}", content=big2,
                          headers={**tokens[0], "Content-Type": "image/png"}, timeout=120)
        if r.status_code != 201:
            raise SystemExit(f"second big upload: {r.status_code} {r.text[:300]}")
        supervisor_rss = rss_bytes(server.pid)
    finally:
        stop(server)
    try:
        raw_cpu, raw_wall = transport_floor(photos, tokens, args.workers, tmp, server_env)
        floors.append(floor(photos, tmp / "floor"))
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)

    floor_cpu = statistics.median(c for c, _ in floors)
    floor_wall = statistics.median(w for _, w in floors)
    mean_kb = statistics.mean(len(p) for p in photos) / 1024
    mb = 1024 * 1024
    rows = [
        ("photos", f"{args.photos} distinct 2048x1536 JPEGs, mean {mean_kb:.0f} KB; {args.clients} clients, "
                   f"{args.workers} workers, SQLite"),
        ("ingest throughput", f"{args.photos / wall:.1f} photos/s ({args.photos / wall * mean_kb / 1024:.1f} MB/s)"),
        ("server CPU per photo", f"{ingest_cpu:.1f} ms"),
        ("floor: sha256+write+fsync, CPU", f"{floor_cpu:.2f} ms per photo (median of {len(floors)}: "
                                           + ", ".join(f"{c:.2f}" for c, _ in floors)
                                           + f")  -> server/floor {ingest_cpu / floor_cpu:.1f}x"),
        ("floor: sha256+write+fsync, wall", f"{floor_wall:.2f} ms per photo  -> server/floor {ingest_cpu / floor_wall:.1f}x"),
        ("of which the structural check", f"{decode_cpu:.1f} ms per photo (measured in-process on the same files)"),
        ("transport floor: bare ASGI app on uvicorn", f"{raw_cpu:.1f} ms server CPU per photo ({args.photos / raw_wall:.0f} photos/s) "
                                                     f"-> Firegrid adds {ingest_cpu - raw_cpu:.1f} ms; server/transport floor "
                                                     f"{ingest_cpu / raw_cpu:.1f}x"),
        ("re-send (already stored, 200)", f"{args.photos / resend_wall:.0f} photos/s, {resend_cpu:.2f} ms server CPU each"),
        ("first thumbnail view (lazy, cached)", f"{thumb_cpu:.1f} ms server CPU, {thumb_wall:.1f} ms wall each"),
        ("workers idle after warm-up", f"RSS {idle_rss / mb:.0f} MB (sum), PSS {idle_pss / mb:.0f} MB"),
        (f"15 MB photo ({len(big) / 1e6:.1f} MB PNG), fresh", f"{big_wall * 1000:.0f} ms; peak RSS {big_rss.peak_sum / mb:.0f} MB "
                                                               f"(sum; per worker " + ", ".join(f"{v / mb:.0f}" for v in big_rss.peak_each.values())
                                                               + f"), PSS {big_rss.peak_pss / mb:.0f} MB"),
        ("4-client 3 MP load", f"peak RSS {load_rss.peak_sum / mb:.0f} MB (sum), PSS {load_rss.peak_pss / mb:.0f} MB"),
        ("15 MB photo after the load", f"peak RSS {big_after_rss.peak_sum / mb:.0f} MB (sum), PSS {big_after_rss.peak_pss / mb:.0f} MB"),
        ("supervisor process (not a worker)", f"RSS {supervisor_rss / mb:.0f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    print(f"{'measure':<{width}} | figure")
    print(f"{'-' * width}-|-{'-' * 60}")
    for k, v in rows:
        print(f"{k:<{width}} | {v}")


if __name__ == "__main__":
    main()
