"""Helpers shared by the benchmarks: timing, tables, machine description, throwaway PostgreSQL schemas.

Benchmarks print tables; they never assert on timings.
"""

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from pathlib import Path

import sqlalchemy as sa

DEFAULT_PG_URL = os.environ.get("FIREGRID_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n*q/100), at least 1
    return ordered[int(rank) - 1]


def summarise_ms(samples: Sequence[float]) -> tuple[float, float]:
    """(median, p95) in milliseconds of samples taken in seconds."""
    return statistics.median(samples) * 1000, percentile(samples, 95) * 1000


def time_calls(fn: Callable[[int], object], repeat: int, warmup: int, budget: float | None = None,
               min_calls: int = 50) -> list[float]:
    """Call fn(i) warmup times untimed, then repeat times timed with perf_counter; seconds per call.

    With a budget (seconds), stop early once the timed calls have used it up and at least min_calls ran:
    a query that takes half a second does not need 200 samples to show it."""
    for i in range(warmup):
        fn(i)
    out: list[float] = []
    spent = 0.0
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
        spent += out[-1]
        if budget is not None and spent > budget and len(out) >= min_calls:
            break
    return out


def run_together(threads: Sequence[threading.Thread]) -> float:
    """Start the client threads together and wait for all of them; wall seconds."""
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _mem_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return "unknown"


def machine_info(pg_version: str | None = None) -> str:
    import sqlite3

    parts = [f"{os.cpu_count()} cores (`nproc`: {len(os.sched_getaffinity(0))})", _cpu_model(), f"{_mem_gib()} RAM",
             f"Python {platform.python_version()}", f"SQLite {sqlite3.sqlite_version}"]
    if pg_version:
        parts.append(f"PostgreSQL {pg_version}")
    return f"{date.today().isoformat()}; " + ", ".join(parts)


# -- PostgreSQL schemas ------------------------------------------------------------------------


def schema_url(base_url: str, schema: str) -> str:
    """The same database with search_path set to one schema (as tests/conftest.py PgSchema does)."""
    return base_url + ("&" if "?" in base_url else "?") + f"options=-csearch_path%3D{schema}"


def _admin(base_url: str) -> sa.Engine:
    return sa.create_engine(base_url, isolation_level="AUTOCOMMIT")


def schema_exists(base_url: str, schema: str) -> bool:
    eng = _admin(base_url)
    try:
        with eng.connect() as conn:
            return conn.execute(sa.text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :s"),
                                {"s": schema}).first() is not None
    finally:
        eng.dispose()


def create_schema(base_url: str, schema: str) -> None:
    eng = _admin(base_url)
    with eng.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    eng.dispose()


def drop_schema(base_url: str, schema: str) -> None:
    eng = _admin(base_url)
    with eng.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    eng.dispose()


def pg_server_version(base_url: str) -> str | None:
    try:
        eng = _admin(base_url)
        with eng.connect() as conn:
            v = conn.execute(sa.text("SHOW server_version")).scalar()
        eng.dispose()
        return str(v).split()[0]
    except sa.exc.OperationalError:
        return None
