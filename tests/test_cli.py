"""The `firegrid` commands a new user runs, against a real SQLite file configured by environment."""

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from app.auth.models import User
from app.cli import cli
from app.config import get_settings
from app.db import make_engine
from app.places.models import Place


@pytest.fixture
def env_db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("FIREGRID_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_migrate_seed_user_import(env_db, tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate"]).exit_code == 0
    first = runner.invoke(cli, ["seed-demo"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(cli, ["seed-demo"])
    assert "(0 premises, 0 hazards created)" in second.output  # idempotent

    engine = make_engine(env_db)
    with Session(engine) as s:
        users = set(s.exec(select(User.username)).all())
        assert users == {"admin", "worker-a1", "worker-a2", "worker-b1", "office-a", "office-b", "police-a",
                         "police-b", "brigade"}
        classes = {(town, cls) for town, cls in s.exec(select(Place.town_id, Place.place_class)).all()}
        assert len({t for t, _ in classes}) == 2 and len(classes) == 22  # every class in both towns
        n_places = len(s.exec(select(Place.id)).all())

    made = runner.invoke(cli, ["user", "create", "worker-a3", "--role", "grid_worker", "--unit", "grid-a-1-2",
                               "--password", "long-enough-pw"])
    assert made.exit_code == 0, made.output
    bad_role = runner.invoke(cli, ["user", "create", "x1", "--role", "chief", "--unit", "grid-a-1-2", "--password", "long-enough-pw"])
    assert bad_role.exit_code == 2
    bad_unit = runner.invoke(cli, ["user", "create", "x2", "--role", "grid_worker", "--unit", "office-a", "--password", "long-enough-pw"])
    assert bad_unit.exit_code == 2 and "grid" in bad_unit.output

    csv = tmp_path / "p.csv"
    csv.write_text("name,grid,place_class\n新店,grid-a-1-1,nine_small\n坏行,grid-a-1-1,castle\n", encoding="utf-8")
    imported = runner.invoke(cli, ["import-places", str(csv)])
    assert imported.exit_code == 1  # some rows were rejected
    assert ":3: column place_class:" in imported.output and "1 created" in imported.output
    with Session(engine) as s:
        assert len(s.exec(select(Place.id)).all()) == n_places + 1
    engine.dispose()


def test_seed_demo_refused_in_prod(env_db, monkeypatch):
    monkeypatch.setenv("FIREGRID_ENV", "prod")
    get_settings.cache_clear()
    result = CliRunner().invoke(cli, ["seed-demo"])
    assert result.exit_code == 2


def test_sweep_with_now_and_audit_verify(env_db):
    import sqlalchemy as sa

    from app.audit.models import HazardEvent
    from app.hazards.models import Hazard

    runner = CliRunner()
    runner.invoke(cli, ["migrate"])
    assert runner.invoke(cli, ["seed-demo"]).exit_code == 0
    engine = make_engine(env_db)
    with Session(engine) as s:
        n_office = len(s.exec(select(Hazard.id).where(Hazard.tier == "town_office")).all())
    assert n_office > 0

    bad = runner.invoke(cli, ["sweep", "--now", "next tuesday"])
    assert bad.exit_code == 2
    naive = runner.invoke(cli, ["sweep", "--now", "2030-01-01T09:00:00"])
    assert naive.exit_code == 2 and "time zone" in naive.output

    first = runner.invoke(cli, ["sweep", "--now", "2030-01-07T09:00:00+08:00"])
    assert first.exit_code == 0, first.output
    assert "town_office -> police_station" in first.output
    again = runner.invoke(cli, ["sweep", "--now", "2030-01-07T09:00:00+08:00"])
    assert "escalated 0 hazards" in again.output  # idempotent
    with Session(engine) as s:
        assert not s.exec(select(Hazard.id).where(Hazard.tier == "town_office")).all()

    ok = runner.invoke(cli, ["audit", "verify"])
    assert ok.exit_code == 0 and "OK" in ok.output
    with engine.begin() as conn:  # someone edits history behind the application's back
        conn.execute(sa.update(HazardEvent).where(HazardEvent.seq == 1).values(kind="forged"))
    broken = runner.invoke(cli, ["audit", "verify"])
    assert broken.exit_code == 1 and "edited" in broken.output
    engine.dispose()


def test_import_places_moving_premises_hands_their_open_hazards_over(env_db, tmp_path):
    """A boundary redrawn by CSV: the command loads the policy and calendar, so a moved premises' open
    hazards reach the new town's office, and the audit chains still verify afterwards."""
    from app.hazards.models import Hazard
    from app.org.models import OrgUnit

    runner = CliRunner()
    assert runner.invoke(cli, ["migrate"]).exit_code == 0
    assert runner.invoke(cli, ["seed-demo"]).exit_code == 0
    engine = make_engine(env_db)
    with Session(engine) as s:
        units = {u.code: u.id for u in s.exec(select(OrgUnit)).all()}
        h = s.exec(select(Hazard).where(Hazard.holder_unit_id == units["office-a"],
                                        Hazard.status == "referred")).first()
        place = s.get(Place, h.place_id)
        hazard_id, row = h.id, f"{place.id},{place.name},{place.address or ''},grid-b-1-1,{place.place_class}"
    csv = tmp_path / "redrawn.csv"
    csv.write_text(f"id,name,address,grid,place_class\n{row}\n", encoding="utf-8")
    imported = runner.invoke(cli, ["import-places", str(csv)])
    assert imported.exit_code == 0, imported.output
    assert "1 updated" in imported.output
    with Session(engine) as s:
        moved = s.get(Hazard, hazard_id)
        assert (moved.holder_unit_id, moved.town_id) == (units["office-b"], units["town-b"])
    verified = runner.invoke(cli, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output
    engine.dispose()
