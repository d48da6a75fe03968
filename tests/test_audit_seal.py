"""The audit chain's seals: each event's hash under a key that is not in the database, so whoever can write
the database alone cannot rewrite history and have `firegrid audit verify` pass."""

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from typer.testing import CliRunner

from app.audit.chain import GENESIS, HASHED_FIELDS, event_hash, event_mac
from app.audit.models import HazardEvent
from app.audit.service import audit_key, seal_unsealed, verify_all
from app.cli import cli
from app.config import Settings, UnsafeConfiguration, check_production_safety, get_settings
from app.db import make_engine
from app.hazards.models import Hazard
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push


@pytest.fixture
def env_db(tmp_path, monkeypatch):
    """A migrated, seeded SQLite file configured by environment, as an operator's CLI sees it."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("FIREGRID_DATABASE_URL", url)
    monkeypatch.setenv("FIREGRID_SECRET_KEY", "a-secret-for-the-seal-tests-0123456789")
    get_settings.cache_clear()
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate"]).exit_code == 0
    assert runner.invoke(cli, ["seed-demo"]).exit_code == 0
    engine = make_engine(url)
    yield engine
    engine.dispose()
    get_settings.cache_clear()


def _verify() -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["audit", "verify"])
    return r.exit_code, r.output


def _a_hazard_with_events(engine, at_least: int = 2) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.select(Hazard.id).where(Hazard.event_seq >= at_least).order_by(Hazard.id)).scalars().first()


def _forge(engine, hazard_id: str, kind: str, keep_macs: bool) -> None:
    """What a database writer without the key can do: edit the first event, then recompute every hash after
    it and the hazard's head, so that the bare chain is consistent again."""
    with engine.begin() as conn:
        rows = conn.execute(sa.select(HazardEvent.__table__).where(HazardEvent.hazard_id == hazard_id)
                            .order_by(HazardEvent.seq)).mappings().all()
        prev = GENESIS
        for i, ev in enumerate(rows):
            fields = {k: ev[k] for k in HASHED_FIELDS}
            if i == 0:
                fields["kind"] = kind
            digest = event_hash(prev, fields)
            values = {"kind": fields["kind"], "prev_hash": prev, "hash": digest}
            if not keep_macs:
                values["mac"] = None
            conn.execute(sa.update(HazardEvent).where(HazardEvent.id == ev["id"]).values(**values))
            prev = digest
        conn.execute(sa.update(Hazard).where(Hazard.id == hazard_id).values(last_event_hash=prev))


def test_every_event_the_demo_wrote_is_sealed_and_verifies(env_db):
    with env_db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(HazardEvent).where(HazardEvent.mac.is_(None))).scalar() == 0
    code, out = _verify()
    assert code == 0 and "OK" in out


def test_a_rewritten_chain_that_hashes_consistently_fails_on_its_seals(env_db):
    hazard_id = _a_hazard_with_events(env_db)
    _forge(env_db, hazard_id, "dismissed_as_no_hazard", keep_macs=True)
    with Session(env_db) as s:  # the bare chain cannot tell: it is consistent again
        assert [p for p in verify_all(s) if not isinstance(p, int)] == []
    code, out = _verify()
    assert code == 1
    assert f"hazard {hazard_id} event 1: seal does not match" in out
    assert f"hazard {hazard_id} event 2: seal does not match" in out  # every hash after the edit changed too


def test_a_forger_who_drops_the_seals_is_named_too(env_db):
    hazard_id = _a_hazard_with_events(env_db)
    _forge(env_db, hazard_id, "dismissed_as_no_hazard", keep_macs=False)
    code, out = _verify()
    assert code == 1 and f"hazard {hazard_id} event 1: not sealed" in out


def test_verify_under_another_key_fails_and_the_old_secret_as_audit_key_keeps_the_seals(env_db, monkeypatch):
    monkeypatch.setenv("FIREGRID_SECRET_KEY", "a-new-secret-after-rotation-9876543210")
    get_settings.cache_clear()
    code, out = _verify()
    assert code == 1 and "sealed with another audit key" in out
    monkeypatch.setenv("FIREGRID_AUDIT_KEY", "a-secret-for-the-seal-tests-0123456789")  # the old secret
    get_settings.cache_clear()
    code, out = _verify()
    assert code == 0 and "OK" in out


def test_events_stored_before_seals_are_sealed_by_the_upgrade_unless_their_chain_is_broken(env_db):
    """A database from before seals (migration 0019) with its events: the `migrate` run that adds seals seals
    them, but not a chain that already does not verify: a seal must not bless an earlier edit. Later runs
    seal nothing (see the review's tests: they would seal a forgery whose seals were removed)."""
    from app import migrate as m

    broken, intact = sorted(env_db.connect().execute(
        sa.select(Hazard.id).where(Hazard.event_seq >= 2).order_by(Hazard.id).limit(2)).scalars())
    url = get_settings().database_url
    env_db.dispose()
    m.downgrade(url, revision="0019")
    with env_db.begin() as conn:
        conn.execute(sa.update(HazardEvent).where(HazardEvent.hazard_id == broken, HazardEvent.seq == 1)
                     .values(kind="forged"))

    r = CliRunner().invoke(cli, ["migrate"])
    assert r.exit_code == 0  # reported, but the server must still start after it
    assert f"hazard {broken} event 1: content does not match its hash (edited): left unsealed" in r.output
    with env_db.connect() as conn:
        unsealed = set(conn.execute(sa.select(HazardEvent.hazard_id).where(HazardEvent.mac.is_(None))).scalars())
    assert unsealed == {broken}
    code, out = _verify()
    assert code == 1 and f"hazard {intact}" not in out and f"hazard {broken} event 1" in out

    again = CliRunner().invoke(cli, ["audit", "seal"])  # nothing new to seal; the broken chain is still named
    assert again.exit_code == 1 and "sealed 0 audit events" in again.output
    quiet = CliRunner().invoke(cli, ["migrate"])  # at head already: no sealing, nothing to say about it
    assert quiet.exit_code == 0 and "sealed" not in quiet.output and "left unsealed" not in quiet.output


def test_seal_fills_only_missing_seals(env_db):
    key = audit_key(get_settings())
    with env_db.begin() as conn:
        some = conn.execute(sa.select(HazardEvent.id).order_by(HazardEvent.id).limit(3)).scalars().all()
        conn.execute(sa.update(HazardEvent).where(HazardEvent.id.in_(some)).values(mac=None))
    report = seal_unsealed(lambda: Session(env_db), key, batch=1)  # a batch per hazard: the keyset paging too
    assert report.sealed == 3 and report.refused == []
    with env_db.connect() as conn:
        rows = conn.execute(sa.select(HazardEvent.hash, HazardEvent.mac)).all()
    assert all(mac == event_mac(key, h) for h, mac in rows)


def test_events_written_through_the_api_are_sealed_with_the_apps_key(client, session, units):
    settings = client.app.state.settings
    worker = login(client, "worker-a1")
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    from datetime import datetime, timedelta, timezone
    hz = hazard_data(place.id, datetime.now(timezone(timedelta(hours=8))) - timedelta(hours=1))
    [res] = push(client, worker, op("hazard.report", hz))
    assert res["status"] == "applied", res
    events = session.exec(select(HazardEvent).where(HazardEvent.hazard_id == hz["id"])).all()
    assert events and all(e.mac == event_mac(audit_key(settings), e.hash) for e in events)
    other = audit_key(Settings(secret_key="not-the-apps-secret-key-0123456789"))
    assert all(e.mac != event_mac(other, e.hash) for e in events)
    shown = client.get(f"/api/v1/hazards/{hz['id']}", headers=worker).json()["timeline"]
    assert shown and all("hash" in e and "mac" not in e for e in shown)  # the chain is public, its seals are not


def test_production_refuses_a_weak_audit_key():
    strong = "Zq8v1R_xk2LmP9sTn4Yb7cWd3Ef6Gh0Jk5"
    check_production_safety(Settings(env="prod", secret_key=strong), demo_accounts_present=False)
    with pytest.raises(UnsafeConfiguration, match="FIREGRID_AUDIT_KEY"):
        check_production_safety(Settings(env="prod", secret_key=strong, audit_key="short"), demo_accounts_present=False)
    check_production_safety(Settings(env="prod", secret_key=strong, audit_key=strong[::-1]), demo_accounts_present=False)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sealing_older_events_on_each_backend(backend, tmp_path):
    from tests.test_migrations import seeded_database

    key = audit_key(Settings(secret_key="the-operators-own-secret-key-42-chars-long"))
    with seeded_database(backend, tmp_path) as (_, engine):
        with engine.begin() as conn:
            conn.execute(sa.update(HazardEvent).values(mac=None))
            n = conn.execute(sa.select(sa.func.count()).select_from(HazardEvent)).scalar()
        assert seal_unsealed(lambda: Session(engine), key, batch=7).sealed == n
        with Session(engine) as s:
            problems = [p for p in verify_all(s, key=key) if not isinstance(p, int)]
        assert problems == []
        assert seal_unsealed(lambda: Session(engine), key).sealed == 0  # nothing left: a second run seals nothing


# -- anchors: what seals cannot see ---------------------------------------------------------------


def _anchor(path) -> None:
    r = CliRunner().invoke(cli, ["audit", "anchor", "--out", str(path)])
    assert r.exit_code == 0, r.output
    assert not path.with_name(path.name + ".part").exists()


def _verify_against(path) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["audit", "verify", "--anchor", str(path)])
    return r.exit_code, r.output


def test_a_hazard_deleted_with_all_its_events_is_caught_only_by_an_anchor(env_db, tmp_path):
    anchor = tmp_path / "heads.txt.gz"
    _anchor(anchor)
    hazard_id = _a_hazard_with_events(env_db)
    with env_db.connect() as conn:  # a writer who removes every trace, foreign keys and all
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.commit()
        for table in ("hazard_events", "referrals", "hazard_cc", "reinspections", "hazards"):
            col = "id" if table == "hazards" else "hazard_id"
            conn.execute(sa.text(f"DELETE FROM {table} WHERE {col} = :h"), {"h": hazard_id})
        conn.commit()
    code, out = _verify()
    assert code == 0  # seals cannot see what is not there
    code, out = _verify_against(anchor)
    assert code == 1 and f"hazard {hazard_id} event " in out and "anchored event is gone" in out, out


def test_a_chain_cut_back_with_its_head_is_caught_by_an_anchor(env_db, tmp_path):
    anchor = tmp_path / "heads.txt"
    _anchor(anchor)
    hazard_id = _a_hazard_with_events(env_db)
    with env_db.begin() as conn:
        seq, prev = conn.execute(sa.select(Hazard.event_seq, HazardEvent.prev_hash).join(
            HazardEvent, (HazardEvent.hazard_id == Hazard.id) & (HazardEvent.seq == Hazard.event_seq))
            .where(Hazard.id == hazard_id)).one()
        conn.execute(sa.delete(HazardEvent).where(HazardEvent.hazard_id == hazard_id, HazardEvent.seq == seq))
        conn.execute(sa.update(Hazard).where(Hazard.id == hazard_id).values(event_seq=seq - 1, last_event_hash=prev))
    assert _verify()[0] == 0
    code, out = _verify_against(anchor)
    assert code == 1 and f"hazard {hazard_id} event {seq}: anchored event is gone" in out


def test_history_that_grew_since_the_anchor_still_verifies_against_it(env_db, tmp_path):
    anchor = tmp_path / "heads.txt"
    _anchor(anchor)
    n_anchored = int(anchor.read_text().splitlines()[-1].split()[1])
    r = CliRunner().invoke(cli, ["sweep", "--now", "2031-01-07T09:00:00+08:00"])  # escalations: new events
    assert r.exit_code == 0 and "escalated 0 hazards" not in r.output
    code, out = _verify_against(anchor)
    assert code == 0 and f"and {n_anchored} anchored heads: OK" in out


def test_an_anchor_that_is_edited_cut_short_or_not_one_is_refused(env_db, tmp_path):
    anchor = tmp_path / "heads.txt"
    _anchor(anchor)
    lines = anchor.read_text().splitlines(keepends=True)
    edited = tmp_path / "edited.txt"
    victim = lines[1].split()
    edited.write_text(lines[0] + f"{victim[0]} {victim[1]} {'0' * 64}\n" + "".join(lines[2:]))
    code, out = _verify_against(edited)
    assert code == 2 and "seal does not match" in out
    cut = tmp_path / "cut.txt"
    cut.write_text("".join(lines[:-1]))
    code, out = _verify_against(cut)
    assert code == 2 and "cut short" in out
    other = tmp_path / "other.txt"
    other.write_text("hello\n")
    code, out = _verify_against(other)
    assert code == 2 and "not a Firegrid audit anchor" in out
    code, out = _verify_against(tmp_path / "absent.txt")
    assert code == 2 and "absent.txt" in out


def test_an_event_whose_data_is_no_longer_json_is_named_and_the_rest_still_checked(env_db):
    """Edited in place as text (SQLite's JSON is text): `audit verify` used to stop with a traceback."""
    hazard_id, other = sorted(env_db.connect().execute(
        sa.select(Hazard.id).where(Hazard.event_seq >= 2).order_by(Hazard.id).limit(2)).scalars())
    _forge(env_db, other, "dismissed_as_no_hazard", keep_macs=True)  # a forgery further on is still caught
    with env_db.begin() as conn:
        conn.exec_driver_sql("UPDATE hazard_events SET data = '{not json' WHERE hazard_id = ? AND seq = 1", (hazard_id,))
    code, out = _verify()
    assert code == 1 and "Traceback" not in out
    assert f"hazard {hazard_id} event None: an event's data is not JSON any more (edited)" in out
    assert f"hazard {other} event 1: seal does not match" in out
