"""Photo ingest benchmark against a real server (uvicorn, 2 workers) on a throw-away SQLite database.

    .venv/bin/python -m bench.photo_bench [--photos 200] [--clients 4] [--workers 2] [--compare K=V] [--compare-root DIR]

What it does, all in one run on one machine:

0. Touches and frees 2 GiB of memory (``--warm-memory-gib``), so that no measurement pays for a
   virtual machine's first use of a page (``warm_memory``).
1. ``firegrid migrate`` + ``firegrid seed-demo`` on a temp SQLite file and blob directory
   (FIREGRID_DATABASE_URL / FIREGRID_STORAGE_DIR), then ``firegrid serve --workers 2`` on a free port.
2. Makes N distinct 3-megapixel JPEGs (2048x1536, photo-like: gradients, shapes, sensor noise).
2b. Waits (``--settle``, at most 10 min) until a new empty file costs under 100 µs of CPU again: on this
   VM's journal-less ext4 a file created within minutes of a mass deletion costs milliseconds
   (``creation_cost_us``), which would put the floor and the servers on different machines.
3. Interleaved rounds (``--rounds``, 8): each round takes fresh variants of a slice of the photos
   (``variant``: same pixels, other bytes) and has three measure them in turn, in an order that
   rotates: Firegrid (4 client threads PUT them; the workers' CPU from their process CPU clocks),
   the **transport floor** (the same uvicorn, same number of workers, serving
   ``bench.raw_upload_app``, a bare ASGI app that only hashes, writes, fsyncs and keeps the body; the
   same clients PUT the same bytes), and the **floor** (in this process, sha256 + write + fsync of
   the same bytes into the same filesystem, CPU time of the thread; and again written as Firegrid
   writes, with O_DIRECT, ``floor_direct``, which does not grow the page cache). The ratios are taken per round,
   so all three meet the same machine: its speed wanders 2-3x within minutes. Peak RSS of
   Firegrid's workers is sampled every 20 ms meanwhile. ``--compare K=V`` adds a second Firegrid,
   run with that environment (e.g. ``FIREGRID_STORAGE_DIRECT_IO=false``), to the same rounds;
   ``--compare-root DIR`` runs it from another checkout (a ``git worktree`` with one change).
4. Re-send of the same photos (already stored: 200 without reading the body).
5. First view of a thumbnail (made lazily, then cached): server CPU per thumbnail.
6. A 15 MB photo (a PNG of noise, ~2250x2250 RGB, under the 15 MiB default limit) streamed
   alone, once right after warm-up (before step 3) and once more after the load: peak RSS of
   the workers (sum of VmRSS sampled every 20 ms; PSS too, which counts shared pages once).

The server runs the code of the checkout this file lives in (PYTHONPATH is set to it).
Prints a table; no assertion on timings (bench/ never fails on numbers).
"""

from __future__ import annotations

import argparse
import contextlib
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
from contextlib import contextmanager
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
    """CPU time of the whole process (every thread, living or gone), user and system, in seconds.

    Read from the process's CPU-time clock (clock_gettime on the clock id Linux derives from a pid,
    to the nanosecond): /proc/<pid>/stat counts in 10 ms ticks, too coarse for the short interleaved
    rounds below. Falls back to /proc where that clock cannot be read."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    except OSError:
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
    """Sum of VmRSS (and PSS) over the given pids every `interval` seconds; keeps the peak. With ``master``
    (the process the workers were forked from, which holds the pages they share): also the PSS of the
    whole server, master included (``peak_total_pss``)."""

    def __init__(self, pids: list[int], interval: float = 0.02, master: int | None = None):
        self.pids, self.interval, self.master = pids, interval, master
        self.peak_sum = 0
        self.peak_pss = 0
        self.peak_total_pss = 0
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
        pss = sum(pss_bytes(p) for p in self.pids)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_total_pss = max(self.peak_total_pss, pss + (pss_bytes(self.master) if self.master else 0))
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


SETTLED_US = 100.0  # CPU µs per new empty file above which the filesystem is not settled (settled here: 15-25, just after a mass deletion 100-4000)


def creation_cost_us(directory: Path, n: int = 200) -> float:
    """CPU µs per new empty file in ``directory``.

    On ext4 without a journal (this VM's root filesystem) the inode allocator passes over every inode
    deleted in the last minutes (``recently_deleted()``: 5 s, or 5 min while the inode's table block
    is still dirty), reading each one's block. After a ``rm -rf`` of tens of thousands of files (an
    earlier run's temp directory, a test run, a pip build) a new file costs milliseconds instead of
    microseconds -- for the floor and the servers alike, but not equally (their directories sit in
    different block groups), so the ratios then say little: measured, the floor went from 0.9 to
    3-4 ms per photo after deleting 20,000 files. The probe's files are kept (deleting them would
    add to what the allocator passes over); they go with the temp directory."""
    directory.mkdir(parents=True, exist_ok=True)
    first = len(os.listdir(directory))
    t0 = time.thread_time()
    for i in range(first, first + n):
        os.close(os.open(directory / f"p{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    return (time.thread_time() - t0) * 1e6 / n


def settle(directory: Path, max_wait: float) -> tuple[float, float]:
    """Wait (at most max_wait seconds) until new files are cheap again; (µs per file, seconds waited)."""
    cost, waited = creation_cost_us(directory), 0.0
    while cost > SETTLED_US and waited < max_wait:
        print(f"a new file costs {cost:.0f} µs of CPU (files deleted in the last minutes: see creation_cost_us); "
              f"waiting for the filesystem to settle ({waited:.0f} of at most {max_wait:.0f} s) ...", flush=True)
        time.sleep(15)
        waited += 15
        cost = creation_cost_us(directory)
    return cost, waited


def floor(photos: list[bytes], directory: Path) -> tuple[float, float]:
    """(CPU ms, wall ms) per photo of sha256 + write + fsync, in this thread. The files are kept, as a
    store keeps its photos: deleting them would let the next writes reuse their page-cache pages,
    which costs less than growing the cache as the servers must."""
    directory.mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for data in photos:
        name = hashlib.sha256(data).hexdigest()
        with open(directory / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    return cpu * 1000 / len(photos), wall * 1000 / len(photos)


def floor_direct(photos: list[bytes], directory: Path) -> float:
    """CPU ms per photo of sha256 + writing the way Firegrid writes (app/photos/staging.py: 64 KB chunks
    gathered in a page-aligned stage, written with O_DIRECT but for the head and the tail) + fsync.

    The buffered floor grows the page cache by a photo's size each time, which on this VM costs from
    0.9 to 3.5 ms per photo depending on how recently memory was handed back to the host (see the
    top of docs/PERFORMANCE.md); this one, like Firegrid, does not, so the two move together."""
    from app.photos.staging import StagedFile, Staging

    directory.mkdir(parents=True, exist_ok=True)
    staging = Staging()
    cpu0 = time.thread_time()
    for data in photos:
        fd = os.open(directory / hashlib.sha256(data).hexdigest(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            out = StagedFile(fd, staging)
            view = memoryview(data)
            for i in range(0, len(data), 65536):
                rest = out.stage(view[i:i + 65536])
                while rest is not None:
                    out.drain()
                    rest = out.stage(rest)
            out.drain(final=True)
            os.fsync(fd)
            out.close()
        finally:
            os.close(fd)
    return (time.thread_time() - cpu0) * 1000 / len(photos)


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


def variant(photo: bytes, tag: int) -> bytes:
    """The same JPEG with a comment segment after its start marker: other bytes and another name, the
    same pixels and the same decoding cost. Each interleaved round sends fresh photos this way, so no
    round finds its photos already stored."""
    note = f"bench round {tag}".encode()
    return photo[:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note + photo[2:]


@contextmanager
def raw_server(workers: int, tmp: Path, server_env: dict[str, str]):
    """bench.raw_upload_app on the same uvicorn as Firegrid; yields (base URL, worker pids)."""
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
        yield base, worker_pids(server.pid)
    finally:
        stop(server)


def round_photos(photos: list[bytes], rounds: int, r: int) -> list[bytes]:
    """Round r's photos: every rounds-th one from the r-th on (all photos used, rounds differ by one at most)."""
    return [variant(p, r) for p in photos[r::rounds]]


def interleaved(photos: list[bytes], rounds: int, servers: dict[str, tuple[str, list[dict], list[int]]],
                floor_dir: Path) -> list[dict[str, float]]:
    """The servers (name -> base URL, tokens, worker pids: Firegrid, the bare app, maybe Firegrid run
    otherwise) and the in-process floor, taking turns on fresh variants of the same photos.

    The machine's speed wanders by 2-3x within minutes (docs/PERFORMANCE.md): measured one after the
    other, the floor and the servers met different machines, and the ratio moved more with the
    denominator than with the code. Here each round has them all measure the same bytes within a few
    seconds, in an order that rotates from round to round. Per round: CPU ms per photo of each, and
    each server's wall seconds ("<name>_wall")."""
    out = []
    for r in range(rounds):
        batch = round_photos(photos, rounds, r)
        row: dict[str, float] = {}

        def server_turn(name: str) -> None:
            base, tokens, pids = servers[name]
            cpu0 = server_cpu(pids)
            row[name + "_wall"] = put_all(base, tokens, batch, 201)
            row[name] = (server_cpu(pids) - cpu0) * 1000 / len(batch)

        def floor_turn() -> None:
            row["floor"], row["floor_wall"] = floor(batch, floor_dir)
            row["floor_direct"] = floor_direct(batch, floor_dir.with_name(floor_dir.name + "-direct"))

        turns = [lambda name=name: server_turn(name) for name in servers] + [floor_turn]
        k = r % len(turns)
        for turn in turns[k:] + turns[:k]:
            turn()
        out.append(row)
    return out


@contextmanager
def firegrid_server(tmp: Path, env: dict[str, str], workers: int):
    """`firegrid serve` on a fresh SQLite database and blob directory under tmp; yields (base URL,
    server Popen, worker pids)."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**env, "FIREGRID_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}", "FIREGRID_STORAGE_DIR": str(tmp / "blobs")}
    firegrid = str(Path(sys.executable).parent / "firegrid")
    for cmd in (["migrate"], ["seed-demo"]):
        subprocess.run([firegrid, *cmd], env=env, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([firegrid, "serve", "--port", str(port), "--workers", str(workers)], env=env,
                              cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "wb"))
    try:
        if not wait_until_up(f"{base}/healthz", server):
            raise SystemExit(f"server did not start, see {tmp / 'server.log'}")
        time.sleep(1.0)  # let the second worker finish starting
        pids = worker_pids(server.pid)
        assert len(pids) == workers, f"expected {workers} workers, found {pids}"
        yield base, server, pids
    finally:
        stop(server)


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f}x, {min(values):.1f}-{max(values):.1f}x over {len(values)} rounds"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds the photos are split into")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--big-side", type=int, default=2250, help="side of the noise PNG (2250 -> ~15.2 MB)")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    ap.add_argument("--warm-memory-gib", type=float, default=2.0,
                    help="touch and free this much memory first (0: measure on a cold virtual machine)")
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V",
                    help="extra environment for the server, e.g. MALLOC_ARENA_MAX=2 (repeatable)")
    ap.add_argument("--settle", type=float, default=600, metavar="SECONDS",
                    help="wait at most this long for new files to be cheap again before measuring "
                         "(see creation_cost_us; 0: measure at once)")
    ap.add_argument("--compare", action="append", default=[], metavar="K=V",
                    help="also run a second Firegrid with this environment in the same rounds, e.g. "
                         "FIREGRID_STORAGE_DIRECT_IO=false (repeatable: one server with all of them)")
    ap.add_argument("--compare-root", metavar="DIR",
                    help="run the second Firegrid (see --compare) from this checkout instead, e.g. a `git worktree` "
                         "with one change, to weigh a change of code in the same rounds")
    args = ap.parse_args()
    if not 1 <= args.rounds <= args.photos:
        ap.error("--rounds must be between 1 and --photos")

    tmp = Path(tempfile.mkdtemp(prefix="fg-photo-bench-"))
    env = {**os.environ, "FIREGRID_ENV": "dev", "FIREGRID_SWEEP_INTERVAL_SECONDS": "0",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server_env = dict(kv.split("=", 1) for kv in args.server_env)  # the transport floor runs with it too
    env.update(server_env)
    compare_env = dict(kv.split("=", 1) for kv in args.compare)
    if args.compare_root:
        compare_env["PYTHONPATH"] = str(Path(args.compare_root).resolve()) + os.pathsep + os.environ.get("PYTHONPATH", "")

    print(f"warming {args.warm_memory_gib:g} GiB of memory; making {args.photos} distinct 3 MP JPEGs and a "
          f"{args.big_side}x{args.big_side} noise PNG ...", flush=True)
    warm_memory(args.warm_memory_gib)
    photos = distinct_jpegs(args.photos)
    big, big2 = noise_png(args.big_side), noise_png(args.big_side, seed=6)
    limit = 15 * 1024 * 1024
    if max(len(big), len(big2)) > limit:
        env["FIREGRID_MAX_PHOTO_BYTES"] = str(len(big) + 1)
        print(f"note: the big PNG is {len(big)} bytes, over 15 MiB: FIREGRID_MAX_PHOTO_BYTES={len(big) + 1}")

    with contextlib.ExitStack() as running:
        if not args.keep:  # removed however the run ends
            running.callback(subprocess.run, ["rm", "-rf", str(tmp)], check=False)
        base, server, pids = running.enter_context(firegrid_server(tmp, env, args.workers))
        tokens = [login(base, f"bench-{i}") for i in range(args.clients)]
        # warm-up: each worker imports Pillow's plugins and opens its DB connections on first use
        warm = distinct_jpegs(4, 640, 480)
        put_all(base, tokens, warm, 201)
        idle_rss = sum(rss_bytes(p) for p in pids)
        idle_pss = sum(pss_bytes(p) for p in pids)
        idle_total_pss = idle_pss + pss_bytes(server.pid)

        # the 15 MB photo first, on a server that has only warmed up
        with RssSampler(pids, master=server.pid) as big_rss:
            t0 = time.perf_counter()
            r = httpx.put(f"{base}/api/v1/blobs/{hashlib.sha256(big).hexdigest()}", content=big,
                          headers={**tokens[0], "Content-Type": "image/png"}, timeout=120)
            big_wall = time.perf_counter() - t0
        if r.status_code != 201:
            raise SystemExit(f"big upload: {r.status_code} {r.text[:300]}")

        decode_cpu = decode_share(photos, tmp)
        create_before, settled_after = settle(tmp / "probe", args.settle)
        servers = {"firegrid": (base, tokens, pids)}
        with contextlib.ExitStack() as others:
            raw_base, raw_pids = others.enter_context(raw_server(args.workers, tmp, server_env))
            put_all(raw_base, tokens, warm, 201)  # warm-up
            servers["raw"] = (raw_base, tokens, raw_pids)
            if compare_env:
                cmp_base, _, cmp_pids = others.enter_context(
                    firegrid_server(tmp / "compare", {**env, **compare_env}, args.workers))
                cmp_tokens = [login(cmp_base, f"bench-{i}") for i in range(args.clients)]
                put_all(cmp_base, cmp_tokens, warm, 201)
                servers["compare"] = (cmp_base, cmp_tokens, cmp_pids)
            with RssSampler(pids, master=server.pid) as load_rss:
                rounds = interleaved(photos, args.rounds, servers, tmp / "floor")
        create_after = creation_cost_us(tmp / "probe")
        sent = [p for r in range(args.rounds) for p in round_photos(photos, args.rounds, r)]

        cpu0 = server_cpu(pids)
        resend_wall = put_all(base, tokens, sent, 200)
        resend_cpu = (server_cpu(pids) - cpu0) * 1000 / len(sent)

        n_thumbs = min(50, len(sent))
        cpu0 = server_cpu(pids)
        with httpx.Client(base_url=base, headers=tokens[0], timeout=60) as c:
            t0 = time.perf_counter()
            for data in sent[:n_thumbs]:
                r = c.get(f"/api/v1/blobs/{hashlib.sha256(data).hexdigest()}/thumb")
                r.raise_for_status()
            thumb_wall = (time.perf_counter() - t0) * 1000 / n_thumbs
        thumb_cpu = (server_cpu(pids) - cpu0) * 1000 / n_thumbs

        with RssSampler(pids, master=server.pid) as big_after_rss:  # another 15 MB photo, after the load
            r = httpx.put(f"{base}/api/v1/blobs/{hashlib.sha256(big2).hexdigest()}", content=big2,
                          headers={**tokens[0], "Content-Type": "image/png"}, timeout=120)
        if r.status_code != 201:
            raise SystemExit(f"second big upload: {r.status_code} {r.text[:300]}")
        supervisor_rss = rss_bytes(server.pid)

    n = len(sent)
    fg = statistics.mean(r["firegrid"] for r in rounds)  # rounds differ in size by one photo at most
    raw = statistics.mean(r["raw"] for r in rounds)
    fl = statistics.mean(r["floor"] for r in rounds)
    fl_wall = statistics.mean(r["floor_wall"] for r in rounds)
    wall = sum(r["firegrid_wall"] for r in rounds)
    mean_kb = statistics.mean(len(p) for p in photos) / 1024
    mb = 1024 * 1024
    rows = [
        ("photos", f"{n} distinct 2048x1536 JPEGs, mean {mean_kb:.0f} KB, in {args.rounds} interleaved rounds; "
                   f"{args.clients} clients, {args.workers} workers, SQLite"),
        ("new empty file, CPU (settled: < 100 µs)", f"{create_before:.0f} µs before the rounds (after waiting {settled_after:.0f} s), "
                                                    f"{create_after:.0f} µs after" + ("  -> NOT SETTLED: the ratios below mean little"
                                                                                      if max(create_before, create_after) > SETTLED_US else "")),
        ("ingest throughput", f"{n / wall:.1f} photos/s ({n / wall * mean_kb / 1024:.1f} MB/s)"),
        ("server CPU per photo", f"{fg:.2f} ms (rounds: " + ", ".join(f"{r['firegrid']:.1f}" for r in rounds) + ")"),
        ("floor: sha256+write+fsync, CPU", f"{fl:.2f} ms per photo (rounds: " + ", ".join(f"{r['floor']:.2f}" for r in rounds)
                                           + f")  -> server/floor {fg / fl:.2f}x; per round "
                                           + _spread([r["firegrid"] / r["floor"] for r in rounds])),
        ("floor, written as Firegrid writes (O_DIRECT)", f"{statistics.mean(r['floor_direct'] for r in rounds):.2f} ms per photo (rounds: "
                                                          + ", ".join(f"{r['floor_direct']:.2f}" for r in rounds) + ")  -> server/it per round "
                                                          + _spread([r["firegrid"] / r["floor_direct"] for r in rounds])),
        ("floor: sha256+write+fsync, wall", f"{fl_wall:.2f} ms per photo  -> server/floor {fg / fl_wall:.2f}x"),
        ("of which the structural check", f"{decode_cpu:.2f} ms per photo (measured in-process on the same files)"),
        ("transport floor: bare ASGI app on uvicorn", f"{raw:.2f} ms server CPU per photo -> Firegrid adds {fg - raw:.2f} ms; "
                                                     f"server/transport floor {fg / raw:.2f}x, per round "
                                                     + _spread([r["firegrid"] / r["raw"] for r in rounds])
                                                     + f"; transport floor/floor {raw / fl:.2f}x"),
        *([(f"Firegrid with {' '.join(args.compare + ([f'the code of {args.compare_root}'] if args.compare_root else []))}",
             f"{statistics.mean(r['compare'] for r in rounds):.2f} ms server CPU per photo (rounds: "
             + ", ".join(f"{r['compare']:.1f}" for r in rounds) + "); this run's Firegrid / it: per round "
             + _spread([r["firegrid"] / r["compare"] for r in rounds]))] if compare_env else []),
        ("re-send (already stored, 200)", f"{n / resend_wall:.0f} photos/s, {resend_cpu:.2f} ms server CPU each"),
        ("first thumbnail view (lazy, cached)", f"{thumb_cpu:.1f} ms server CPU, {thumb_wall:.1f} ms wall each"),
        ("workers idle after warm-up", f"RSS {idle_rss / mb:.0f} MB (sum), PSS {idle_pss / mb:.0f} MB; "
                                       f"whole server (master too) PSS {idle_total_pss / mb:.0f} MB"),
        (f"15 MB photo ({len(big) / 1e6:.1f} MB PNG), fresh", f"{big_wall * 1000:.0f} ms; peak RSS {big_rss.peak_sum / mb:.0f} MB "
                                                               f"(sum; per worker " + ", ".join(f"{v / mb:.0f}" for v in big_rss.peak_each.values())
                                                               + f"), PSS {big_rss.peak_pss / mb:.0f} MB; whole server PSS "
                                                               f"{big_rss.peak_total_pss / mb:.0f} MB"),
        # the bare app's workers map the same libraries meanwhile, so PSS splits those pages four ways, not two
        ("4-client 3 MP load (bare app running too)", f"peak RSS {load_rss.peak_sum / mb:.0f} MB (sum), "
                                                      f"PSS {load_rss.peak_pss / mb:.0f} MB (shared pages split with it); "
                                                      f"whole server PSS {load_rss.peak_total_pss / mb:.0f} MB"),
        ("15 MB photo after the load", f"peak RSS {big_after_rss.peak_sum / mb:.0f} MB (sum), PSS {big_after_rss.peak_pss / mb:.0f} MB; "
                                       f"whole server PSS {big_after_rss.peak_total_pss / mb:.0f} MB"),
        ("master process (not a worker)", f"RSS {supervisor_rss / mb:.0f} MB (with --workers 2 it holds the app the "
                                          "workers were forked from: its pages are theirs too)"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    print(f"{'measure':<{width}} | figure")
    print(f"{'-' * width}-|-{'-' * 60}")
    for k, v in rows:
        print(f"{k:<{width}} | {v}")


if __name__ == "__main__":
    main()
