"""Review of the audit chain's seals and anchors: attacks by someone who can write the database but not
read the server's configuration, and operator scenarios. Every test here failed on the code reviewed."""

import threading
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from sqlmodel import Session
from typer.testing import CliRunner

from app.audit.chain import GENESIS, HASHED_FIELDS, ChainProblem, event_hash
from app.audit.models import HazardEvent
from app.audit import service as audit_service
from app.audit.service import Actor, audit_key, event_row, insert_events, seal_unsealed, verify_all
from app.cli import cli
from app.config import get_settings
from app.db import Database, make_engine
from app.hazards.models import Hazard
from tests.conftest import fresh_database_url

SECRET = "a-secret-for-the-review-tests-0123456789"


def _env_db(url: str, monkeypatch):
    monkeypatch.setenv("FIREGRID_DATABASE_URL", url)
    monkeypatch.setenv("FIREGRID_SECRET_KEY", SECRET)
    monkeypatch.delenv("FIREGRID_AUDIT_KEY", raising=False)
    get_settings.cache_clear()
    runner = CliRunner()
    r = runner.invoke(cli, ["migrate"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["seed-demo"])
    assert r.exit_code == 0, r.output
    return make_engine(url)


@pytest.fixture
def env_db(tmp_path, monkeypatch):
    """A migrated, seeded SQLite file configured by environment, as an operator's CLI sees it."""
    engine = _env_db(f"sqlite:///{tmp_path / 'audit.db'}", monkeypatch)
    yield engine
    engine.dispose()
    get_settings.cache_clear()


@pytest.fixture
def env_pg(tmp_path, monkeypatch):
    url, cleanup = fresh_database_url("postgresql", tmp_path)
    engine = _env_db(url, monkeypatch)
    yield engine
    engine.dispose()
    get_settings.cache_clear()
    cleanup()


def _cli(*args) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


def _hazards(engine, at_least: int = 2, n: int = 2) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(Hazard.id).where(Hazard.event_seq >= at_least)
                                 .order_by(Hazard.id).limit(n)).scalars())


def _rewrite_from(engine, hazard_id: str, from_seq: int, edit, null_macs: bool) -> None:
    """A database writer without the key: edit event ``from_seq`` with ``edit(fields)``, recompute every hash
    from there and the hazard's head, so that the bare chain is consistent again; optionally drop the seals
    of the events whose hash changed (a seal that no longer matches is what `audit verify` names)."""
    with engine.begin() as conn:
        rows = conn.execute(sa.select(HazardEvent.__table__).where(HazardEvent.hazard_id == hazard_id)
                            .order_by(HazardEvent.seq)).mappings().all()
        prev = GENESIS
        for ev in rows:
            if ev["seq"] < from_seq:
                prev = ev["hash"]
                continue
            fields = {k: ev[k] for k in HASHED_FIELDS}
            if ev["seq"] == from_seq:
                edit(fields)
            digest = event_hash(prev, fields)
            values = {**{k: fields[k] for k in ("kind", "data", "flagged")}, "prev_hash": prev, "hash": digest}
            if null_macs:
                values["mac"] = None
            conn.execute(sa.update(HazardEvent).where(HazardEvent.id == ev["id"]).values(**values))
            prev = digest
        conn.execute(sa.update(Hazard).where(Hazard.id == hazard_id).values(last_event_hash=prev))


def _dismiss(fields) -> None:
    fields["kind"] = "dismissed_as_no_hazard"
    fields["data"] = {"note": "never happened like this"}


# -- 1. `migrate` (at every start) seals a forgery ----------------------------------------------------


def test_migrate_at_start_reseals_a_whole_chain_rewritten_with_its_seals_dropped(env_db):
    """Attack: rewrite a hazard's whole history, recompute its hashes and head, set every mac to NULL. The
    container's next start runs `firegrid migrate`, whose seal_unsealed sees an unsealed chain that verifies
    and seals it with the server's key: `audit verify` then passes on the forged history."""
    victim = _hazards(env_db)[0]
    _rewrite_from(env_db, victim, 1, _dismiss, null_macs=True)
    code, out = _cli("audit", "verify")
    assert code == 1 and f"hazard {victim} event 1: not sealed" in out  # caught... until the next start
    code, out = _cli("migrate")  # the image runs it at every start
    assert code == 0
    code, out = _cli("audit", "verify")
    assert code == 1, f"a forged chain was sealed by `migrate` and now verifies: {out}"


def test_migrate_seals_unsealed_events_after_sealed_ones_even_past_an_anchor(env_db, tmp_path):
    """Attack: rewrite only the newest event(s) of a hazard, after the last anchor (the earlier events keep
    their seals). An unsealed event after a sealed one never happens legitimately (every event since the
    upgrade is sealed as it is written), yet `migrate` seals it: `audit verify --anchor` passes."""
    anchor = tmp_path / "heads.txt.gz"
    assert _cli("audit", "anchor", "--out", str(anchor))[0] == 0
    with env_db.connect() as conn:
        before = dict(conn.execute(sa.select(Hazard.id, Hazard.event_seq)).all())
    code, out = _cli("sweep", "--now", "2031-01-07T09:00:00+08:00")  # new events after the anchor
    assert code == 0 and "escalated 0 hazards" not in out
    with env_db.connect() as conn:
        grown = conn.execute(sa.select(Hazard.id, Hazard.event_seq).order_by(Hazard.id)).all()
    victim, seq = next((h, s) for h, s in grown if s > before.get(h, 0) and before.get(h, 0) > 0)
    _rewrite_from(env_db, victim, seq, _dismiss, null_macs=True)
    assert _cli("migrate")[0] == 0
    code, out = _cli("audit", "verify", "--anchor", str(anchor))
    assert code == 1, f"an edit after sealed events was sealed by `migrate`: {out}"


# -- 2. a hazard row deleted, its events left: nothing reports it ------------------------------------


def test_deleting_only_the_hazard_row_passes_verify_even_with_an_anchor(env_db, tmp_path):
    """Attack: delete the hazard (sqlite3's shell has foreign keys off by default; on PostgreSQL drop or
    disable the constraint) but leave its events. The hazard is gone from every queue and page. verify_all
    walks the hazards table only, so the orphaned events are never looked at, and check_anchor only asks
    whether each anchored (hazard_id, seq, hash) is still in hazard_events, which it is."""
    anchor = tmp_path / "heads.txt"
    assert _cli("audit", "anchor", "--out", str(anchor))[0] == 0
    victim = _hazards(env_db)[0]
    import sqlite3

    shell = sqlite3.connect(env_db.url.database)  # as the sqlite3 shell: foreign keys off unless asked for
    shell.execute("DELETE FROM hazards WHERE id = ?", (victim,))
    shell.commit()
    shell.close()
    code, out = _cli("audit", "verify", "--anchor", str(anchor))
    assert code == 1 and victim in out, f"a deleted hazard whose events were left behind verifies: {out}"


# -- 3. one malformed seal stops verification ---------------------------------------------------------


def test_a_non_ascii_mac_crashes_verify_and_hides_every_other_forgery(env_db):
    """Attack: set one event's mac to non-ASCII text. hmac.compare_digest raises TypeError on non-ASCII
    str, so `audit verify` dies with a traceback at that hazard: every forgery after it goes unnamed."""
    first, second = _hazards(env_db)
    with env_db.begin() as conn:
        conn.execute(sa.update(HazardEvent).where(HazardEvent.hazard_id == first, HazardEvent.seq == 1)
                     .values(mac="é" * 32))
    _rewrite_from(env_db, second, 1, _dismiss, null_macs=False)
    r = CliRunner().invoke(cli, ["audit", "verify"])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 1
    assert f"hazard {first} event 1: seal does not match" in r.output
    assert f"hazard {second} event 1: seal does not match" in r.output


# -- 4. `audit verify` / `audit seal` beside a running server on PostgreSQL ---------------------------


def _append_event_meanwhile(engine, hazard_id: str) -> None:
    """What the server does to a hazard meanwhile: its next event and the head, in one write transaction as the
    server opens it (on SQLite BEGIN IMMEDIATE: a read transaction upgraded to a write after another writer
    committed fails at once, whatever the busy timeout)."""
    with Database(engine).session(write=True) as s:
        h = s.get(Hazard, hazard_id)
        ev = event_row(h, "note", Actor.system(), datetime.now(timezone.utc), data={"text": "meanwhile"})
        insert_events(s, [ev])
        s.add(h)
        s.commit()


def _append_while_events_are_read(monkeypatch, engine, victim: str) -> list:
    """The server writes the victim's next event between the read of the heads and that of the events; the
    list returned is non-empty once it has."""
    audit_service.use_settings(get_settings())
    original = audit_service._events_of
    fired: list = []

    def events_of(session, ids):
        if not fired and victim in ids:
            fired.append(1)
            _append_event_meanwhile(engine, victim)
        return original(session, ids)

    monkeypatch.setattr(audit_service, "_events_of", events_of)
    return fired


def test_verify_beside_a_live_postgresql_server_reports_a_cut_chain_that_is_not(env_pg, monkeypatch):
    """verify_all reads the heads in one statement and the events in another: under READ COMMITTED an event
    committed in between makes an intact chain look cut ("chain head does not match"), and the nightly
    `audit verify` of a busy server exits 1 on nothing."""
    victim = _hazards(env_pg)[0]
    fired = _append_while_events_are_read(monkeypatch, env_pg, victim)
    with Session(env_pg) as s:
        problems = [p for p in verify_all(s, key=audit_key(get_settings())) if isinstance(p, ChainProblem)]
    assert fired and problems == [], problems


def test_seal_beside_a_live_postgresql_server_refuses_an_intact_chain(env_pg, monkeypatch):
    """The same race in seal_unsealed (migrate at start while other replicas serve): an older, intact chain
    is reported as broken and left unsealed, and `audit seal` exits 1."""
    victim = _hazards(env_pg)[0]
    with env_pg.begin() as conn:  # as migration 0020 leaves events stored before
        conn.execute(sa.update(HazardEvent).values(mac=None))
    fired = _append_while_events_are_read(monkeypatch, env_pg, victim)
    report = seal_unsealed(lambda: Session(env_pg), audit_key(get_settings()))
    assert fired and report.refused == [], report.refused


# -- 5. operator: anchors and exit codes --------------------------------------------------------------


def test_a_corrupt_gzip_anchor_is_an_error_not_a_traceback(env_db, tmp_path):
    """A damaged .gz anchor (a bad copy off the other machine) raises zlib.error, which `audit verify` does
    not catch (it catches OSError, EOFError, UnicodeDecodeError): a traceback and exit 1, the code for
    'history was tampered with', instead of exit 2 naming the file."""
    anchor = tmp_path / "heads.txt.gz"
    assert _cli("audit", "anchor", "--out", str(anchor))[0] == 0
    raw = bytearray(anchor.read_bytes())
    assert len(raw) > 400
    for i in range(120, min(len(raw) - 20, 400)):
        raw[i] ^= 0x55
    anchor.write_bytes(bytes(raw))
    r = CliRunner().invoke(cli, ["audit", "verify", "--anchor", str(anchor)])
    assert r.exit_code == 2 and "heads.txt.gz" in r.output, (r.exit_code, r.output, repr(r.exception))


def test_anchor_into_a_missing_directory_is_an_error_not_a_traceback(env_db, tmp_path):
    r = CliRunner().invoke(cli, ["audit", "anchor", "--out", str(tmp_path / "no-such-dir" / "heads.txt")])
    assert r.exit_code == 2 and "no-such-dir" in r.output, (r.exit_code, r.output, repr(r.exception))


# -- 6. the sealing key is process-wide: the last app created wins ------------------------------------


def test_seal_beside_a_live_sqlite_server_is_not_refused_by_the_write_lock(env_db, monkeypatch):
    """seal_unsealed's docstring: 'safe to run beside a running server'. On SQLite its session is a
    deferred (read) transaction that later UPDATEs: if the server committed meanwhile, SQLite cannot
    upgrade the stale snapshot to a write (SQLITE_BUSY_SNAPSHOT, no busy wait helps)."""
    first, second = _hazards(env_db)
    with env_db.begin() as conn:  # as migration 0020 leaves events stored before
        conn.execute(sa.update(HazardEvent).values(mac=None))
    audit_service.use_settings(get_settings())
    original = audit_service._events_of
    fired = []

    server = []
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            _append_event_meanwhile(env_db, second)
        except BaseException as exc:  # the test says so, not a warning about a thread
            failed.append(exc)

    def events_of(session, ids):
        out = original(session, ids)
        if not fired:  # the server writes while the seal reads: it waits for the seal's write lock
            fired.append(1)
            server.append(threading.Thread(target=serve))
            server[0].start()
        return out

    monkeypatch.setattr(audit_service, "_events_of", events_of)
    r = CliRunner().invoke(cli, ["audit", "seal"])
    server[0].join(30)
    assert fired and r.exit_code == 0, (r.exit_code, r.output, repr(r.exception))
    assert not server[0].is_alive() and not failed, failed
