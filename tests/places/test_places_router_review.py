"""Premises over HTTP and by CSV, from an adversarial review (2026-12-01): a PATCH that clears a text field,
ids the rest of the API could never reach, NUL characters, and a CSV whose text holds line breaks."""

import pytest
from sqlmodel import select

from app.places.models import Place
from app.places.service import import_places_csv
from tests.conftest import login
from tests.helpers import place_of, uid


# -- PATCH /places/{id} ------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["address", "owner_name", "owner_phone"])
def test_patching_a_text_field_to_null_clears_it_instead_of_a_500(client, session, units, field):
    """The columns hold "" for "none"; a PATCH naming the field with null was written as NULL into a NOT NULL
    column (an IntegrityError: 500 on both backends). null clears the field."""
    place = place_of(session, units, "grid-a-1-1", "rental")
    r = client.patch(f"/api/v1/places/{place.id}", json={field: None}, headers=login(client, "worker-a1"))
    assert r.status_code == 200, r.text
    assert r.json()[field] == ""
    session.refresh(place)
    assert getattr(place, field) == ""


def test_a_patched_name_is_stored_as_it_is_shown(client, session, units):
    """PlaceCreate strips the name; a PATCH stored " 书店 " and answered "书店" (the response model strips)."""
    place = place_of(session, units, "grid-a-1-1", "rental")
    r = client.patch(f"/api/v1/places/{place.id}", json={"name": "  改名书店 "}, headers=login(client, "worker-a1"))
    assert r.status_code == 200 and r.json()["name"] == "改名书店"
    session.refresh(place)
    assert place.name == "改名书店"


@pytest.mark.parametrize("field", ["name", "address", "owner_name", "owner_phone"])
def test_a_nul_in_a_premises_field_is_a_422_naming_it_on_either_backend(client, session, units, field):
    """SQLite stored a NUL (200), PostgreSQL refused it with a message naming no field: both now name it."""
    headers = login(client, "worker-a1")
    grid = units["grid-a-1-1"]
    r = client.post("/api/v1/places", json={"name": "书店", "grid_id": grid.id, "place_class": "nine_small",
                                            field: "a\u0000b"}, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == field
    place = place_of(session, units, "grid-a-1-1", "rental")
    r = client.patch(f"/api/v1/places/{place.id}", json={field: "a\u0000b"}, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == field


@pytest.mark.parametrize("bad_id", ["", "a/b", "x\u0000" + "1" * 10, "../../etc"])
def test_a_new_premises_id_is_a_client_uuid_as_in_the_push(client, session, units, bad_id):
    """POST /places took any id: "" (a premises with an empty id) or "a/b" (one GET and PATCH /places/{id}
    can never reach). The push's place.upsert takes client UUIDs only; so does POST now."""
    r = client.post("/api/v1/places", json={"id": bad_id, "name": "无名书店", "grid_id": units["grid-a-1-1"].id,
                                            "place_class": "nine_small"}, headers=login(client, "worker-a1"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == "id"
    assert session.exec(select(Place).where(Place.name == "无名书店")).first() is None


def test_a_new_premises_with_a_client_uuid_is_created_and_reachable(client, units):
    headers = login(client, "worker-a1")
    pid = uid()
    r = client.post("/api/v1/places", json={"id": pid, "name": "书店", "grid_id": units["grid-a-1-1"].id,
                                            "place_class": "nine_small"}, headers=headers)
    assert r.status_code == 201, r.text
    assert client.get(f"/api/v1/places/{pid}", headers=headers).json()["id"] == pid


# -- CSV import ----------------------------------------------------------------------------------


def _import(session, tmp_path, text):
    path = tmp_path / "places.csv"
    path.write_text(text, encoding="utf-8")
    return import_places_csv(session, path)


def test_a_csv_field_holding_line_breaks_is_imported_whole(session, tmp_path, units):
    """The file was cut with str.splitlines(), which also breaks at U+2028, U+0085 (NEL) and the like: a name
    holding one lost it, or (outside quotes) its row was cut in two, the first half refused and the second
    imported as a premises of its own named after the tail. A quoted field's newline was dropped too."""
    text = ('name,address,grid,place_class\n'
            '"甲\u2028店",路1号,grid-a-1-1,nine_small\n'
            '"乙\n店",路2号,grid-a-1-1,nine_small\n'
            '丙店\x85分店,路3号,grid-a-1-1,nine_small\n'
            '丁店,路4号,grid-a-1-1,castle\n')
    report = _import(session, tmp_path, text)
    assert report.created == 3, report.errors
    # the bad row is named by the line it starts on (the quoted newline makes the file one line longer)
    assert [(e.row, e.column) for e in report.errors] == [(6, "place_class")]
    names = set(session.exec(select(Place.name).where(Place.address.in_(["路1号", "路2号", "路3号"]))).all())
    assert names == {"甲\u2028店", "乙\n店", "丙店\x85分店"}


@pytest.mark.parametrize("column", ["grid", "name", "sector_regulator"])
def test_a_nul_in_a_csv_row_is_reported_and_the_rest_imported(session, tmp_path, units, column):
    """PostgreSQL refuses a NUL in any text it is sent, a lookup's too: a NUL in a row's grid took the whole
    import down (nothing imported, a traceback); SQLite stored one in a name."""
    row = {"name": "戊店", "grid": "grid-a-1-1", "sector_regulator": "regulator-education"}
    row[column] += "\x00"
    text = ("name,address,grid,place_class,sector_regulator\n"
            f"{row['name']},路5号,{row['grid']},nine_small,{row['sector_regulator']}\n"
            "己店,路6号,grid-a-1-1,nine_small,\n")
    report = _import(session, tmp_path, text)
    assert [(e.row, e.column) for e in report.errors] == [(2, column)]
    assert "NUL" in report.errors[0].reason
    assert report.created == 1
    names = set(session.exec(select(Place.name).where(Place.address.in_(["路5号", "路6号"]))).all())
    assert names == {"己店"}


def test_a_csv_re_import_keeps_what_its_sheet_does_not_say(session, tmp_path, units):
    """A sheet with only id, name, grid and class updated a matched premises with every other field blank:
    the coordinates a grid worker's phone took in the field, the owner's phone, the address and the sector
    regulator were wiped. A column the sheet lacks, or a cell left empty, now keeps what the premises has."""
    place = place_of(session, units, "grid-a-1-1", "rental")
    place.lat, place.lon, place.owner_phone = 29.51, 105.91, "13900000000"
    place.sector_regulator_id = units["regulator-education"].id
    session.add(place)
    session.commit()
    address = place.address
    report = _import(session, tmp_path, f"id,name,grid,place_class,owner_name,lat\n"
                                        f"{place.id},改名出租屋,grid-a-1-1,rental,新房东,\n")
    assert (report.updated, report.errors) == (1, [])
    session.refresh(place)
    assert (place.name, place.owner_name) == ("改名出租屋", "新房东")  # what the row says is taken
    assert (place.lat, place.lon, place.owner_phone, place.address) == (29.51, 105.91, "13900000000", address)
    assert place.sector_regulator_id == units["regulator-education"].id
