"""CSV import: good rows in, bad rows out, each bad row reported with its line, column and reason."""

from sqlmodel import select

from app.places.models import Place
from app.places.service import import_places_csv

CSV = """name,address,grid,place_class,lat,lon,owner_name,owner_phone,sector_regulator
新华书店,青峰镇中心路1号,grid-a-1-1,nine_small,29.35,105.92,王五,13900000001,
,青峰镇中心路2号,grid-a-1-1,rental,29.35,105.92,,,
星光网吧,青峰镇中心路3号,grid-a-1-1,internet_cafe,29.35,105.92,,,
明星幼儿园,青峰镇中心路4号,grid-a-1-1,key_unit_3,95.0,105.92,,,regulator-education
远方仓库,远方路5号,grid-z-9-9,other,,,,,
和美诊所,青峰镇中心路6号,grid-a-1-2,nine_small,29.35,east,,,regulator-nope
江边自建房,临江街道江边路7号,grid-b-1-1,self_built,29.39,105.88,赵六,13900000002,
"""


def _import(session, tmp_path, text):
    path = tmp_path / "places.csv"
    path.write_text(text, encoding="utf-8")
    return import_places_csv(session, path)


def test_good_rows_imported_bad_rows_reported(session, tmp_path, units):
    report = _import(session, tmp_path, CSV)
    errors = {(e.row, e.column) for e in report.errors}
    assert errors == {
        (3, "name"),            # blank name
        (4, "place_class"),     # not a class code
        (5, "lat"),             # latitude out of range
        (6, "grid"),            # unknown grid
        (7, "lon"),             # not a number
        (7, "sector_regulator"),
    }
    assert report.created == 2 and report.rejected_rows == 5
    names = set(session.exec(select(Place.name).where(Place.address.like("%路%号"), Place.name.in_(
        ["新华书店", "星光网吧", "明星幼儿园", "远方仓库", "和美诊所", "江边自建房"]))).all())
    assert names == {"新华书店", "江边自建房"}
    imported = session.exec(select(Place).where(Place.name == "江边自建房")).one()
    assert imported.town_id == units["town-b"].id and imported.grid_id == units["grid-b-1-1"].id
    assert all(e.reason for e in report.errors)


def test_reimport_updates_instead_of_duplicating(session, tmp_path):
    _import(session, tmp_path, CSV)
    again = _import(session, tmp_path, CSV.replace("13900000001", "13900000009"))
    assert again.created == 0 and again.updated == 2
    rows = session.exec(select(Place).where(Place.name == "新华书店")).all()
    assert len(rows) == 1 and rows[0].owner_phone == "13900000009"


def test_bad_header_rejects_file(session, tmp_path):
    report = _import(session, tmp_path, "name,grid,colour\nx,grid-a-1-1,red\n")
    cols = {(e.row, e.column) for e in report.errors}
    assert (1, "place_class") in cols and (1, "colour") in cols
    assert report.created == 0


def test_non_utf8_file_is_reported(session, tmp_path):
    path = tmp_path / "gbk.csv"
    path.write_bytes("name,grid,place_class\n书店,grid-a-1-1,nine_small\n".encode("gbk"))
    report = import_places_csv(session, path)
    assert report.created == 0 and "UTF-8" in report.errors[0].reason
