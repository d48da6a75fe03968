"""Queue listing at scale (issue 3): GET /api/v1/queue over 1,000,000 hazards in 100 towns.

Builds a county (brigade + 100 towns, each with a town office, a police station, 2 communities of
5 grids and 50 premises), bulk-loads N hazards with a realistic mix of holders, statuses, deadlines,
severities and premises classes, then times ``app.hazards.service.queue`` (the function behind
GET /api/v1/queue) for a sample of town offices, police stations and the brigade: the first, the middle
and the last page of each unit's list (cursors found by following next_cursor from the first page),
unfiltered and filtered. Then the same through HTTP in-process (FastAPI TestClient, real bearer token).

    .venv/bin/python -m bench.queue_bench                       # 1,000,000 hazards, SQLite and PostgreSQL
    .venv/bin/python -m bench.queue_bench --hazards 100000 --backend sqlite
    .venv/bin/python -m bench.queue_bench --keep                # keep (and later reuse) the generated data
    .venv/bin/python -m bench.queue_bench --keep --explain      # plus the query plans of every variant

The data is written straight into the tables (Core executemany on SQLite, COPY on PostgreSQL), not
through report_hazard: the queue reads neither events nor referrals. Times are wall-clock per call,
including a fresh Session per call (what one request pays), never asserted on.
"""

import argparse
import json
import random
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import Session, select

from app import migrate
from app.auth.models import Role, User
from app.auth.scope import Scope
from app.db import make_engine
from app.hazards import service
from app.hazards.models import NO_DEADLINE, Hazard, HazardCC
from app.org.models import OrgUnit, UnitKind
from app.org.service import create_unit
from app.places.models import Place
from app.referrals.service import OPEN_STATUSES
from bench.common import (
    DEFAULT_PG_URL, create_schema, drop_schema, machine_info, markdown_table, pg_server_version, schema_exists,
    schema_url, summarise_ms, time_calls,
)

ROOT = Path(__file__).resolve().parent.parent
POLICY = tomllib.loads((ROOT / "app/referrals/default_policy.toml").read_text())
CATEGORIES = [c["code"] for c in POLICY["categories"]]
POLICY_VERSION = POLICY["version"]
LOCAL_TZ = ZoneInfo("Asia/Shanghai")

# A fixed "now" (a Monday, 09:00 in China), so a kept database means the same thing on every run.
BENCH_NOW = datetime(2026, 3, 2, 1, 0, tzinfo=timezone.utc)
CHUNK = 20_000
PLACES_PER_TOWN = 50
# 50 premises per town by class (the supervising tier follows the class, see default_policy.toml)
PLACE_MIX = {"key_unit_1": 1, "key_unit_2": 2, "key_unit_3": 3, "police_list": 4, "nine_small": 10,
             "three_in_one": 4, "rental": 12, "self_built": 5, "crowded": 4, "residential": 3, "other": 2}
TIER_CLASSES = {"brigade": ("key_unit_1", "key_unit_2"), "police_station": ("key_unit_3", "police_list")}
TIER_CLASSES["town_office"] = tuple(c for c in PLACE_MIX if c not in TIER_CLASSES["brigade"] + TIER_CLASSES["police_station"])
TIER_RANK = {"town_office": 0, "police_station": 1, "brigade": 2}
REASONS = {
    "major-to-brigade": ("重大火灾隐患，由消防救援大队督办", "Major hazard: the brigade supervises"),
    "key-unit-brigade": ("一级、二级消防安全重点单位由大队监管", "Level-1/2 key unit: brigade"),
    "police-supervised": ("三级重点单位、派出所检查范围由派出所监管", "Police-supervised premises"),
    "town-office-default": ("其他场所由镇街监管", "Other premises: town office"),
}
HAZARD_COLS = [c.name for c in Hazard.__table__.columns]
CC_COLS = ["hazard_id", "unit_id", "reason", "added_at", "next_due", "is_open", "created_at"]
OPEN_STATUS_VALUES = frozenset(s.value for s in OPEN_STATUSES)


# -- the org tree and premises -------------------------------------------------------------------


@dataclass
class Town:
    id: str
    office_id: str
    police_id: str
    communities: dict[str, list[str]] = field(default_factory=dict)  # community id -> grid ids
    places: dict[str, list[tuple[str, str, str, str]]] = field(default_factory=dict)  # class -> (id, class, community, grid)


@dataclass
class World:
    county_id: str
    brigade_id: str
    towns: list[Town]


def build_tree(session: Session, n_towns: int, rng: random.Random) -> World:
    county = create_unit(session, code="bench-county", name="基准县", kind=UnitKind.county, parent=None)
    brigade = create_unit(session, code="bench-brigade", name="基准县消防救援大队", kind=UnitKind.brigade, parent=county)
    towns = []
    place_rows = []
    for t in range(n_towns):
        town = create_unit(session, code=f"bench-t{t:03d}", name=f"第{t}镇", kind=UnitKind.town, parent=county)
        office = create_unit(session, code=f"bench-t{t:03d}-office", name=f"第{t}镇综合执法办",
                             kind=UnitKind.town_office, parent=town)
        police = create_unit(session, code=f"bench-t{t:03d}-police", name=f"第{t}镇派出所",
                             kind=UnitKind.police_station, parent=town)
        tw = Town(town.id, office.id, police.id)
        for c in range(2):
            comm = create_unit(session, code=f"bench-t{t:03d}-c{c}", name=f"第{t}镇第{c}社区",
                               kind=UnitKind.community, parent=town)
            comm.police_station_id = police.id
            tw.communities[comm.id] = [
                create_unit(session, code=f"bench-t{t:03d}-c{c}-g{g}", name=f"第{c}社区第{g}网格",
                            kind=UnitKind.grid, parent=comm).id
                for g in range(5)
            ]
        grids = [(cid, gid) for cid, gs in tw.communities.items() for gid in gs]
        n = 0
        for cls, count in PLACE_MIX.items():
            for _ in range(count):
                cid, gid = rng.choice(grids)
                pid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                tw.places.setdefault(cls, []).append((pid, cls, cid, gid))
                place_rows.append(dict(
                    id=pid, name=f"第{t}镇场所{n:02d}", address=f"第{t}镇某路{n}号", grid_id=gid, place_class=cls,
                    lat=30 + rng.random(), lon=120 + rng.random(), owner_name="业主", owner_phone="13800000000",
                    sector_regulator_id=None, town_id=town.id, community_id=cid,
                    created_at=BENCH_NOW - timedelta(days=800), updated_at=BENCH_NOW - timedelta(days=800)))
                n += 1
        towns.append(tw)
    session.flush()
    session.execute(sa.insert(Place), place_rows)
    return World(county.id, brigade.id, towns)


def load_world(session: Session) -> World:
    units = session.exec(select(OrgUnit).where(OrgUnit.code.like("bench-%"))).all()
    by_code = {u.code: u for u in units}
    county, brigade = by_code["bench-county"], by_code["bench-brigade"]
    towns = {}
    for u in sorted(units, key=lambda u: u.code):
        if u.kind == UnitKind.town:
            towns[u.id] = Town(u.id, by_code[f"{u.code}-office"].id, by_code[f"{u.code}-police"].id)
    for u in units:
        if u.kind == UnitKind.community:
            towns[u.town_id].communities.setdefault(u.id, [])
    for u in units:
        if u.kind == UnitKind.grid:
            towns[u.town_id].communities[u.community_id].append(u.id)
    for p in session.exec(select(Place)).all():
        towns[p.town_id].places.setdefault(p.place_class, []).append((p.id, p.place_class, p.community_id, p.grid_id))
    return World(county.id, brigade.id, list(towns.values()))


# -- hazards --------------------------------------------------------------------------------------


def _workday_deadlines(now: datetime, days: int) -> list[datetime]:
    """Deadlines as the calendar makes them: the end of a (Mon-Fri) local day, i.e. the next local midnight."""
    today = now.astimezone(LOCAL_TZ).date()
    out = []
    for k in range(-days, days + 1):
        d = today + timedelta(days=k)
        if d.weekday() < 5:
            out.append(datetime.combine(d + timedelta(days=1), datetime.min.time(), LOCAL_TZ).astimezone(timezone.utc))
    return out


def hazard_rows(world: World, n: int, rng: random.Random) -> Iterator[tuple[list[tuple], list[tuple]]]:
    """Chunks of (hazard rows, hazard_cc rows) as tuples in HAZARD_COLS / CC_COLS order."""
    deadlines = _workday_deadlines(BENCH_NOW, 60)
    day = timedelta(days=1)
    towns = world.towns
    rand, choice, bits = rng.random, rng.choice, rng.getrandbits
    hz, cc = [], []
    for i in range(n):
        town = towns[i % len(towns)]
        # who holds it: 75% town office, 15% police station, 10% brigade
        u = rand()
        tier = "town_office" if u < 0.75 else "police_station" if u < 0.90 else "brigade"
        holder = town.office_id if tier == "town_office" else town.police_id if tier == "police_station" else world.brigade_id
        # the premises: mostly of the holder's own classes; the rest came up the chain (escalated) or down
        natural = tier if rand() < 0.85 else choice(("town_office", "police_station", "brigade"))
        pid, pclass, cid, gid = choice(town.places[choice(TIER_CLASSES[natural])])
        escalated = TIER_RANK[tier] > TIER_RANK[natural]
        # 5% major overall, almost all at the brigade (major-to-brigade)
        major = rand() < (0.45 if tier == "brigade" else 0.0055)
        listed = major and tier == "brigade"
        violation = rand() < 0.2
        rule = "major-to-brigade" if major and tier == "brigade" else {
            "brigade": "key-unit-brigade", "police_station": "police-supervised", "town_office": "town-office-default"}[tier]
        reason_zh, reason_en = REASONS[rule]

        s = rand()
        ack_due = order_due = rectify_due = reinspect_due = escalate_at = closed_at = deadline_met = None
        evidence = False
        if s < 0.60:  # terminal: 58% closed, 1.5% dismissed, 0.5% merged
            status = "closed" if s < 0.58 else "dismissed" if s < 0.595 else "merged"
            created = BENCH_NOW - timedelta(seconds=rand() * 730 * 86400)
            ack_due = created + day
            rectify_due = created + timedelta(days=7 + int(rand() * 30))
            closed_at = min(created + timedelta(seconds=rand() * 60 * 86400), BENCH_NOW)
            if status == "closed":
                evidence = True
                reinspect_due = rectify_due + 3 * day
                deadline_met = closed_at <= rectify_due or rand() < 0.5
            next_due = NO_DEADLINE
        else:
            status = "referred" if s < 0.70 else "accepted" if s < 0.78 else "rectifying" if s < 0.95 else "reinspection_due"
            due = choice(deadlines)
            if status == "referred":
                created = due - timedelta(seconds=86400 * (1 + rand()))
                ack_due = escalate_at = due
            elif status == "accepted":
                created = due - timedelta(days=3 + int(rand() * 3))
                ack_due, order_due = created + day, due
                escalate_at = due
            elif status == "rectifying":
                created = due - timedelta(days=7 + int(rand() * 40))
                ack_due, rectify_due, reinspect_due = created + day, due, due + 3 * day
                escalate_at = reinspect_due
            else:
                created = due - timedelta(days=10 + int(rand() * 40))
                ack_due, rectify_due, reinspect_due = created + day, due - 3 * day, due
                escalate_at = due
            created = min(created, BENCH_NOW - timedelta(minutes=5))
            next_due = due
            if listed:
                escalate_at = None  # at the brigade under listed supervision nothing is left to escalate to
        hid = str(uuid.UUID(int=bits(128), version=4))
        seq = 2 + int(rand() * 6)
        cat = choice(CATEGORIES)
        hz.append((
            hid, pid, None, cat, "major" if major else "general", violation, f"{cat} @ {pclass}",
            created - timedelta(minutes=5), json.dumps([f"{bits(256):064x}"]) if rand() < 0.7 else "[]", None, None,
            town.id, cid, gid, pclass, status, tier, holder,
            (town.police_id if tier == "brigade" else town.office_id) if escalated else None,
            ("police_station" if tier == "brigade" else "town_office") if escalated else None,
            ack_due, order_due, rectify_due, reinspect_due, listed, evidence, next_due, escalate_at, None,
            rule, reason_zh, reason_en, POLICY_VERSION, None, None, 0, created, closed_at or created, closed_at,
            deadline_met, deadline_met is False, created if listed else None, None, seq, f"{bits(256):064x}", seq,
        ))
        # copies (抄送): the town office whenever another tier holds it; the police station on majors
        is_open = status in OPEN_STATUS_VALUES  # the copies carry the hazard's urgency and openness
        if tier != "town_office":
            cc.append((hid, town.office_id, "town_office", created, next_due, is_open, created))
        if major and tier != "police_station":
            cc.append((hid, town.police_id, "police_station", created, next_due, is_open, created))
        if len(hz) >= CHUNK:
            yield hz, cc
            hz, cc = [], []
    if hz:
        yield hz, cc


def _check_columns() -> None:
    expected = ["id", "place_id", "inspection_id", "category", "severity", "violation", "description", "found_at",
                "photos", "reporter_user_id", "reporter_device_id", "town_id", "community_id", "grid_id", "place_class",
                "status", "tier", "holder_unit_id", "previous_holder_unit_id", "previous_tier", "ack_due", "order_due",
                "rectify_due", "reinspect_due", "listed_supervision", "has_rectified_evidence", "next_due",
                "escalate_at", "clock_basis", "rule", "reason_zh", "reason_en", "policy_version", "duplicate_of_id",
                "merged_into_id", "attention", "created_at", "updated_at", "closed_at", "deadline_met",
                "rectify_missed", "listed_at", "listing_raised_at", "event_seq", "last_event_hash", "version"]
    if HAZARD_COLS != expected:
        sys.exit(f"the hazards table changed; update bench.queue_bench.hazard_rows:\n  {HAZARD_COLS}")


def insert_hazards(engine: sa.Engine, world: World, n: int, seed: int) -> None:
    _check_columns()
    rng = random.Random(seed + 1)
    t0 = time.perf_counter()
    done = 0
    pg = engine.dialect.name == "postgresql"
    if pg:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            for hz, cc in hazard_rows(world, n, rng):
                with cur.copy(f"COPY hazards ({', '.join(HAZARD_COLS)}) FROM STDIN") as cp:
                    for row in hz:
                        cp.write_row(row)
                with cur.copy(f"COPY hazard_cc ({', '.join(CC_COLS)}) FROM STDIN") as cp:
                    for row in cc:
                        cp.write_row(row)
                raw.commit()
                done += len(hz)
                _progress(done, n, t0)
        finally:
            raw.close()
    else:
        hazards, ccs = Hazard.__table__, HazardCC.__table__
        with engine.connect() as conn:
            # a bigger page cache for the load only: random UUID keys touch every index page
            conn.exec_driver_sql("PRAGMA cache_size=-524288")
            for hz, cc in hazard_rows(world, n, rng):
                conn.execute(hazards.insert(), [dict(zip(HAZARD_COLS, r)) for r in hz])
                conn.execute(ccs.insert(), [dict(zip(CC_COLS, r)) for r in cc])
                conn.commit()
                done += len(hz)
                _progress(done, n, t0)
    print(f"  {n:,} hazards in {time.perf_counter() - t0:.0f} s", flush=True)


def _progress(done: int, n: int, t0: float) -> None:
    if done % 100_000 == 0 or done == n:
        el = time.perf_counter() - t0
        print(f"  {done:>9,} / {n:,} hazards  {el:6.0f} s  ({done / el:,.0f}/s)", flush=True)


def hazard_count(engine: sa.Engine) -> int | None:
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM hazards")).scalar()
    except sa.exc.DBAPIError:
        return None


def analyze(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT")
            for t in ("org_units", "places", "hazards", "hazard_cc"):
                conn.execute(sa.text(f"VACUUM ANALYZE {t}"))
        else:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()


# -- backends -------------------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    url: str
    cleanup: object  # callable


def prepare(backend: str, args) -> tuple[Backend, sa.Engine, World]:
    """A database holding exactly args.hazards hazards (reused when --keep found one), analysed."""
    if backend == "sqlite":
        path = Path(args.db_dir) / f"queue-bench-{args.hazards}.db"
        url = f"sqlite:///{path}"
        reuse = args.keep and path.exists()
        def cleanup(path=path):
            for p in (path, *(Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", ".writelock"))):
                p.unlink(missing_ok=True)
        if not reuse:
            cleanup()
    else:
        url = schema_url(args.pg_url, args.pg_schema)
        reuse = args.keep and schema_exists(args.pg_url, args.pg_schema)
        def cleanup():
            drop_schema(args.pg_url, args.pg_schema)
        if not reuse:
            drop_schema(args.pg_url, args.pg_schema)
            create_schema(args.pg_url, args.pg_schema)
    be = Backend(backend, url, cleanup)
    if reuse:
        engine = make_engine(url)
        have = hazard_count(engine)
        if have == args.hazards:
            print(f"[{backend}] reusing {have:,} hazards ({url})", flush=True)
            with Session(engine) as s:
                return be, engine, load_world(s)
        print(f"[{backend}] found {have} hazards, want {args.hazards:,}: rebuilding", flush=True)
        engine.dispose()
        if backend == "sqlite":
            cleanup()
        else:
            drop_schema(args.pg_url, args.pg_schema)
            create_schema(args.pg_url, args.pg_schema)
    print(f"[{backend}] building {url}", flush=True)
    t0 = time.perf_counter()
    migrate.upgrade(url, revision=args.revision)
    engine = make_engine(url)
    rng = random.Random(args.seed)
    with Session(engine) as s:
        world = build_tree(s, args.towns, rng)
        s.commit()
    print(f"  org tree and {args.towns * PLACES_PER_TOWN:,} places in {time.perf_counter() - t0:.1f} s", flush=True)
    insert_hazards(engine, world, args.hazards, args.seed)
    t1 = time.perf_counter()
    analyze(engine)
    print(f"  ANALYZE in {time.perf_counter() - t1:.0f} s; built in {time.perf_counter() - t0:.0f} s total", flush=True)
    return be, engine, world


# -- measuring ------------------------------------------------------------------------------------

VARIANTS = {  # label -> queue() filters
    "": {},
    "severity=major": {"severity": "major"},
    "overdue": {"overdue": True},
    "place_class=rental": {"place_class": "rental"},
}


def scope_of(world: World, role: Role, unit_id: str, town_id: str | None) -> Scope:
    towns = frozenset({town_id}) if town_id else frozenset(t.id for t in world.towns)
    return Scope(user_id="bench", role=role, unit_id=unit_id, county_id=world.county_id, town_ids=towns, grid_ids=None)


def sample_units(world: World, n: int, rng: random.Random) -> dict[str, list[Scope]]:
    towns = rng.sample(world.towns, min(n, len(world.towns)))
    return {
        "town office": [scope_of(world, Role.town_office, t.office_id, t.id) for t in towns],
        "police station": [scope_of(world, Role.police_station, t.police_id, t.id) for t in towns],
        "brigade": [scope_of(world, Role.brigade, world.brigade_id, None)],
    }


def walk(engine: sa.Engine, scope: Scope, filters: dict) -> tuple[list[str | None], int]:
    """Follow the cursors to the end: the cursor of every page (None for the first) and the row count.
    Also checks the keyset paging: strictly increasing (next_due, created_at, id) (on the copies,
    (next_due, id)), no repeats."""
    cursors: list[str | None] = [None]
    total, last = 0, None
    with Session(engine) as s:
        while True:
            rows, nxt = service.queue(s, scope, BENCH_NOW, cursor=cursors[-1], limit=50, **filters)
            for h, _place in rows:
                key = (h.next_due, h.id) if filters.get("cc") else (h.next_due, h.created_at, h.id)
                if last is not None and key <= last:
                    raise RuntimeError(f"queue paging out of order for {scope.unit_id}: {last} then {key}")
                last = key
            total += len(rows)
            s.expunge_all()
            if nxt is None:
                return cursors, total
            cursors.append(nxt)


@dataclass
class Case:
    scope: Scope
    filters: dict
    cursor: str | None


def measure(engine: sa.Engine, cases: list[Case], args) -> tuple[float, float, float, int]:
    """(median ms, p95 ms, mean rows, calls) over args.repeat calls cycling through the cases, each call in
    a fresh Session (what one request pays: pool checkout, BEGIN, query, ORM objects, ROLLBACK)."""
    rows_seen: list[int] = []

    def call(i: int) -> None:
        c = cases[i % len(cases)]
        with Session(engine) as s:
            rows, _ = service.queue(s, c.scope, BENCH_NOW, cursor=c.cursor, limit=50, **c.filters)
            rows_seen.append(len(rows))

    samples = time_calls(call, args.repeat, warmup=max(20, 2 * len(cases)), budget=args.budget)
    med, p95 = summarise_ms(samples)
    return med, p95, sum(rows_seen) / len(rows_seen), len(samples)


def captured_sql(engine: sa.Engine, scope: Scope, filters: dict, cursor: str | None) -> tuple[str, object]:
    """The SQL and parameters queue() sends, for EXPLAIN."""
    seen = []

    def grab(conn, cursor_, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", grab)
    try:
        with Session(engine) as s:
            service.queue(s, scope, BENCH_NOW, cursor=cursor, limit=50, **filters)
    finally:
        sa.event.remove(engine, "before_cursor_execute", grab)
    return seen[-1]


def explain(engine: sa.Engine, scope: Scope, filters: dict, cursor: str | None) -> str:
    statement, params = captured_sql(engine, scope, filters, cursor)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params).all()
            return "\n".join(r[0] for r in rows)
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
        return "\n".join(f"{r[0]}/{r[1]}: {r[-1]}" for r in rows)


@dataclass
class Walked:
    scope: Scope
    cursors: list[str | None]  # the cursor of every page, None for the first
    total: int


def run_service(be: Backend, engine: sa.Engine, world: World, args) -> tuple[list[tuple], dict[str, Walked]]:
    """Time queue() per holder kind and filter: first, middle and last page. Returns the result rows and
    the walk of the first sampled unit of each kind (unfiltered), for the HTTP run."""
    units = sample_units(world, args.sample, random.Random(args.seed + 2))
    results: list[tuple] = []
    first_walks: dict[str, Walked] = {}
    for who, scopes in units.items():
        for label, filters in VARIANTS.items():
            t0 = time.perf_counter()
            walks = [Walked(sc, *walk(engine, sc, filters)) for sc in scopes]
            if not filters:
                first_walks[who] = walks[0]
            suffix = f", {label}" if label else ""
            multi = [w for w in walks if len(w.cursors) > 1]
            print(f"  [{be.name}] {who}{suffix}: {sum(w.total for w in walks) / len(walks):,.0f} open hazards per unit, "
                  f"{sum(len(w.cursors) for w in walks) / len(walks):.0f} pages "
                  f"(walked in {time.perf_counter() - t0:.1f} s)", flush=True)
            plans = [("first page" + ("" if multi else " (the only page)"), [Case(w.scope, filters, None) for w in walks], 0)]
            if multi:
                mid = round(sum(len(w.cursors) // 2 + 1 for w in multi) / len(multi))
                last = round(sum(len(w.cursors) for w in multi) / len(multi))
                plans += [(f"middle page (p.{mid})", [Case(w.scope, filters, w.cursors[len(w.cursors) // 2]) for w in multi], 1),
                          (f"last page (p.{last})", [Case(w.scope, filters, w.cursors[-1]) for w in multi], 2)]
            for name, cases, _ in plans:
                med, p95, rows, n = measure(engine, cases, args)
                results.append((be.name, f"{who}: {name}{suffix}", med, p95, f"{rows:.0f}", n))
                print(f"    {name}: median {med:.2f} ms, p95 {p95:.2f} ms, {rows:.0f} rows, {n} calls", flush=True)
                if args.explain:
                    print("      " + explain(engine, cases[0].scope, filters, cases[0].cursor).replace("\n", "\n      "))
    # the list a town office is copied on (抄送): another access path (hazard_cc), first page
    cases = [Case(sc, {"cc": True}, None) for sc in units["town office"]]
    med, p95, rows, n = measure(engine, cases, args)
    results.append((be.name, "town office: first page, cc=true", med, p95, f"{rows:.0f}", n))
    print(f"  [{be.name}] town office, cc=true: first page: median {med:.2f} ms, p95 {p95:.2f} ms, {n} calls", flush=True)
    if args.explain:
        print("      " + explain(engine, cases[0].scope, {"cc": True}, None).replace("\n", "\n      "))
    return results, first_walks


def run_http(be: Backend, engine: sa.Engine, walks: dict[str, Walked], args) -> list[tuple]:
    """GET /api/v1/queue in-process through the whole stack (TestClient): bearer token lookup, scope,
    queue(), JSON. First and middle page of one unit of each kind, the cursors taken from the service walk."""
    from fastapi.testclient import TestClient

    from app.auth import service as auth
    from app.config import Settings
    from app.db import Database
    from app.main import create_app

    settings = Settings(database_url=be.url, storage_dir=Path(args.db_dir) / "blobs", secret_key="b" * 40,
                        env="dev", sweep_interval_seconds=0)
    usernames = {}
    with Session(engine) as s:
        for who, w in walks.items():
            unit = s.get(OrgUnit, w.scope.unit_id)
            usernames[who] = username = f"bench-{unit.code}"
            if s.exec(select(User.id).where(User.username == username)).first() is None:
                auth.create_user(s, username=username, password="bench-password", role=w.scope.role, unit=unit)
        s.commit()
    results = []
    with TestClient(create_app(settings, Database(engine), clock=lambda: BENCH_NOW)) as client:
        headers = {}
        for who, username in usernames.items():  # log in as a phone does
            r = client.post("/api/v1/auth/token",
                            data={"username": username, "password": "bench-password", "device_id": "bench"})
            r.raise_for_status()
            headers[who] = {"Authorization": f"Bearer {r.json()['access_token']}"}
        for who, w in walks.items():
            pages = [("first page", None)]
            if len(w.cursors) > 1:
                pages.append((f"middle page (p.{len(w.cursors) // 2 + 1})", w.cursors[len(w.cursors) // 2]))
            for name, cur in pages:
                params = {"limit": 50} | ({"cursor": cur} if cur else {})
                n_items: list[int] = []

                def call(_i: int) -> None:
                    r = client.get("/api/v1/queue", params=params, headers=headers[who])
                    r.raise_for_status()
                    n_items.append(len(r.json()["items"]))

                samples = time_calls(call, args.repeat, warmup=20, budget=args.budget)
                med, p95 = summarise_ms(samples)
                results.append((be.name, f"HTTP GET /api/v1/queue, {who}: {name}", med, p95,
                                f"{sum(n_items) / len(n_items):.0f}", len(samples)))
                print(f"  [{be.name}] HTTP {who}: {name}: median {med:.2f} ms, p95 {p95:.2f} ms", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hazards", type=int, default=1_000_000, help="hazards to generate (default 1,000,000)")
    p.add_argument("--towns", type=int, default=100)
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--db-dir", default="/tmp/firegrid-bench", help="where the SQLite file goes (default %(default)s)")
    p.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL database (default %(default)s)")
    p.add_argument("--pg-schema", default="bench_queue", help="schema created for the run (default %(default)s)")
    p.add_argument("--keep", action="store_true",
                   help="keep the generated database, and reuse one that already holds --hazards hazards")
    p.add_argument("--repeat", type=int, default=200, help="timed calls per query (default %(default)s)")
    p.add_argument("--budget", type=float, default=30.0,
                   help="seconds of timed calls per row after which a slow query stops early (at least 50 calls)")
    p.add_argument("--sample", type=int, default=20, help="town offices and police stations sampled (default %(default)s)")
    p.add_argument("--no-http", dest="http", action="store_false", help="skip the in-process HTTP measurements")
    p.add_argument("--explain", action="store_true", help="print the query plan of every variant")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--revision", default="head", help="Alembic revision to build the schema at (default %(default)s)")
    args = p.parse_args(argv)

    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    pg_version = pg_server_version(args.pg_url) if "postgresql" in backends else None
    results = []
    for name in backends:
        be, engine, world = prepare(name, args)
        try:
            rows, walks = run_service(be, engine, world, args)
            results += rows
            if args.http:
                try:
                    results += run_http(be, engine, walks, args)
                except Exception as e:  # the HTTP layer is optional here; the service figures stand alone
                    print(f"  [{name}] HTTP measurements skipped: {type(e).__name__}: {e}", flush=True)
        finally:
            engine.dispose()
            if not args.keep:
                be.cleanup()
    print()
    print(f"{args.hazards:,} hazards, {args.towns} towns; queue(limit=50) at {BENCH_NOW.isoformat()}; "
          f"up to {args.repeat} calls per row ({args.budget:.0f} s budget); {machine_info(pg_version)}")
    print()
    print(markdown_table(("backend", "query", "median ms", "p95 ms", "rows", "calls"), results))


if __name__ == "__main__":
    main()
