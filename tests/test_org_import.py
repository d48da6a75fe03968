"""`firegrid import-org`: a production county's org tree from a sheet (seed-demo is refused in prod, and there was
no other way to make one), against a real SQLite file configured by environment."""

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from app.cli import cli
from app.config import get_settings
from app.db import make_engine
from app.org.models import OrgUnit

# children before their parents, on purpose: the import places each once its parent is there
TREE = """code,kind,name,parent,enforcement_power,sector,police_station
g-1,grid,一号网格,c-1,,,
c-1,community,东村,t-1,,,ps-1
t-1,town,东镇,cty,yes,,
cty,county,某县,,,,
br,brigade,某县消防救援大队,cty,,,
off-1,town_office,东镇综合执法办,t-1,,,
ps-1,police_station,东镇派出所,t-1,,,
edu,sector_regulator,县教育局,cty,,education,
"""


@pytest.fixture
def env_db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'org.db'}"
    monkeypatch.setenv("FIREGRID_DATABASE_URL", url)
    get_settings.cache_clear()
    assert CliRunner().invoke(cli, ["migrate"]).exit_code == 0
    engine = make_engine(url)
    yield engine
    engine.dispose()
    get_settings.cache_clear()


def _import(tmp_path, text: str, name: str = "org.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return CliRunner().invoke(cli, ["import-org", str(path)])


def test_a_county_from_a_sheet_in_any_order_then_its_first_accounts(env_db, tmp_path):
    r = _import(tmp_path, TREE)
    assert r.exit_code == 0, r.output
    assert "imported: 8 created, 0 updated, 0 rows rejected" in r.output
    with Session(env_db) as s:
        units = {u.code: u for u in s.exec(select(OrgUnit)).all()}
    cty, town, community, grid = units["cty"], units["t-1"], units["c-1"], units["g-1"]
    assert grid.parent_id == community.id and grid.community_id == community.id
    assert grid.town_id == town.id and grid.county_id == cty.id
    assert town.enforcement_power is True and units["off-1"].town_id == town.id
    assert community.police_station_id == units["ps-1"].id
    assert units["edu"].sector == "education" and units["br"].county_id == cty.id

    admin = CliRunner().invoke(cli, ["user", "create", "admin", "--role", "admin", "--unit", "cty",
                                     "--password", "long-enough-pw"])
    assert admin.exit_code == 0, admin.output
    worker = CliRunner().invoke(cli, ["user", "create", "w1", "--role", "grid_worker", "--unit", "g-1",
                                      "--password", "long-enough-pw"])
    assert worker.exit_code == 0, worker.output

    again = _import(tmp_path, TREE.replace("东村", "东村社区"))  # the same sheet again: updates, never twice
    assert again.exit_code == 0 and "imported: 0 created, 8 updated" in again.output
    with Session(env_db) as s:
        assert s.exec(select(OrgUnit.name).where(OrgUnit.code == "c-1")).one() == "东村社区"
        assert len(s.exec(select(OrgUnit.id)).all()) == 8


def test_bad_rows_are_named_and_the_good_ones_kept(env_db, tmp_path):
    assert _import(tmp_path, TREE).exit_code == 0
    sheet = """code,kind,name,parent,enforcement_power,sector,police_station
g-2,grid,二号网格,c-1,,,
g-3,grid,三号网格,nowhere,,,
t-1,community,东镇,cty,,,
x-1,castle,城堡,cty,,,
g-4,grid,四号网格,c-1,yes,,
c-2,community,西村,t-1,,,off-1
off-2,town_office,乡办,cty,,,
"""
    r = _import(tmp_path, sheet, "bad.csv")
    assert r.exit_code == 1
    assert "imported: 2 created, 0 updated, 6 rows rejected" in r.output  # c-2 made, its beat refused
    assert "bad.csv:3: column parent: no unit with code 'nowhere'" in r.output
    assert "bad.csv:4: column kind: unit 't-1' exists as a town" in r.output
    assert "bad.csv:5: column kind: one of county" in r.output
    assert "bad.csv:6: column enforcement_power: only a town" in r.output
    assert "bad.csv:7: column police_station: no police station 'off-1'" in r.output
    assert "bad.csv:8: column *: a town_office cannot be placed under county" in r.output
    with Session(env_db) as s:
        codes = set(s.exec(select(OrgUnit.code)).all())
    assert "g-2" in codes and not codes & {"g-3", "x-1", "g-4", "off-2"}
    assert "c-2" in codes  # made; only its beat was refused


def test_a_sheet_with_an_unknown_column_changes_nothing(env_db, tmp_path):
    r = _import(tmp_path, "code,kind,name,parent,colour\ncty,county,某县,,red\n")
    assert r.exit_code == 1 and "column colour: unknown column" in r.output
    with Session(env_db) as s:
        assert s.exec(select(OrgUnit.id)).all() == []
