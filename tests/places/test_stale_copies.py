"""A phone's edit of a premises, made on a copy older than another's change, does not undo that change.

A phone sends the whole record with every ``place.upsert``, and ``base_version``: the premises' ``version``
its copy had (pull sends it). A field changed elsewhere after that version (an office's correction of the
owner's phone, a move to another grid) comes back with the old copy's value: the server keeps the field as it
is, applies the rest of the edit, says so in ``kept``/``kept_why`` (``stale_copy``), and the phone's next
pull brings the premises as stored. Before, only the class was guarded; every other field was last writer
wins, and a phone syncing after a day offline silently undid the office's corrections.

Edits the phone made itself are ones its copy has seen: offline, every edit names the version it last pulled.
"""

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from app import migrate
from app.auth.models import User
from app.db import make_engine
from app.org.models import OrgUnit
from app.places.models import Place
from app.places.service import import_places_csv
from tests.conftest import fresh_database_url, login
from tests.helpers import op, place_of, push, uid
from tests.sync.test_pull import pull_all


def _copy(place: Place, base_version: int, **edits) -> dict:
    """What a phone sends: the whole record as its copy has it, with the worker's edits."""
    return {"id": place.id, "name": place.name, "address": place.address, "grid_id": place.grid_id,
            "place_class": place.place_class, "lat": place.lat, "lon": place.lon, "owner_name": place.owner_name,
            "owner_phone": place.owner_phone, "base_version": base_version, **edits}


def _fresh(session, place_id: str) -> Place:
    return session.get(Place, place_id, populate_existing=True)


@pytest.fixture
def place(session, units):
    p = place_of(session, units, "grid-a-1-1", "rental")
    session.expunge(p)  # the phone's copy: as it was pulled, whatever changes after
    return p


def test_an_office_correction_is_kept_and_the_rest_of_the_edit_applied(client, session, place):
    worker = login(client, "worker-a1")
    _, cursor, _ = pull_all(client, worker)
    desk = login(client, "office-a", device="desk")
    r = client.patch(f"/api/v1/places/{place.id}", json={"owner_phone": "13900000001", "lat": 29.5, "lon": 106.5},
                     headers=desk)
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    # the phone, still on version 1, writes down the owner's name
    [res] = push(client, worker, op("place.upsert", _copy(place, 1, owner_name="张老板")))
    assert res["status"] == "applied", res
    assert res["result"]["kept"] == {"owner_phone": "13900000001", "lat": 29.5, "lon": 106.5}, res
    assert res["result"]["kept_why"] == dict.fromkeys(("owner_phone", "lat", "lon"), "stale_copy")
    p = _fresh(session, place.id)
    assert (p.owner_phone, p.lat, p.lon, p.owner_name, p.version) == ("13900000001", 29.5, 106.5, "张老板", 3)
    assert res["result"]["version"] == 3
    # the premises as stored is news to the phone that wrote it (after the office's change, which was too)
    changes, _, _ = pull_all(client, worker, cursor)
    *_, change = [c for c in changes if c["type"] == "place" and c["id"] == place.id]
    assert (change["data"]["owner_phone"], change["data"]["owner_name"], change["data"]["version"]) == (
        "13900000001", "张老板", 3)


def test_a_field_changed_before_the_copy_is_the_phones_to_change(client, session, place):
    """A copy that saw the office's change (base_version 2) may change the same field: the worker's word."""
    desk = login(client, "office-a", device="desk")
    assert client.patch(f"/api/v1/places/{place.id}", json={"owner_phone": "13900000001"},
                        headers=desk).status_code == 200
    worker = login(client, "worker-a1")
    [res] = push(client, worker, op("place.upsert", _copy(place, 2, owner_phone="13900000002")))
    assert res["status"] == "applied" and "kept" not in res["result"], res
    assert _fresh(session, place.id).owner_phone == "13900000002"
    # and a field nobody changed since the copy is the phone's too, however old the copy
    [res] = push(client, worker, op("place.upsert", _copy(place, 1, owner_phone="13900000002", address="新地址8号")))
    assert res["status"] == "applied" and "kept" not in res["result"], res
    assert _fresh(session, place.id).address == "新地址8号"


def test_a_phones_own_offline_edits_in_a_row_all_apply(client, session, place):
    """Offline, a worker corrects the owner's phone twice: both edits name version 1, the one pulled. The
    second is not a stale copy of the first: it is the same phone's later word. Another phone of the same
    worker, on version 1, did not see them."""
    worker = login(client, "worker-a1")
    first = _copy(place, 1, owner_phone="13900000001")
    second = _copy(place, 1, owner_phone="13900000002", owner_name="李老板")
    res = push(client, worker, op("place.upsert", first), op("place.upsert", second))
    assert [r["status"] for r in res] == ["applied"] * 2 and all("kept" not in r["result"] for r in res), res
    assert (_fresh(session, place.id).owner_phone, _fresh(session, place.id).version) == ("13900000002", 3)
    other = login(client, "worker-a1", device="second-phone")
    [res] = push(client, other, op("place.upsert", _copy(place, 1, address="另一个地址")))
    assert res["result"]["kept"] == {"owner_phone": "13900000002", "owner_name": "李老板"}, res
    p = _fresh(session, place.id)
    assert (p.owner_phone, p.owner_name, p.address) == ("13900000002", "李老板", "另一个地址")


def test_an_edit_at_a_desk_is_kept_against_the_same_devices_older_offline_edit(client, session, place):
    """Only a synced edit is one a phone's later offline edits have seen: the same device's edit at the desk
    (online, from the premises as it is) is not, and a queued edit from the older copy keeps it."""
    worker = login(client, "worker-a1")
    assert client.patch(f"/api/v1/places/{place.id}", json={"owner_phone": "13900000003"},
                        headers=worker).status_code == 200
    [res] = push(client, worker, op("place.upsert", _copy(place, 1, owner_name="钱老板")))
    assert res["result"]["kept"] == {"owner_phone": "13900000003"}, res


def test_a_csv_import_correction_is_kept_against_a_stale_copy(client, session, place, tmp_path):
    path = tmp_path / "places.csv"
    path.write_text(f"id,name,grid,place_class,owner_phone\n{place.id},{place.name},grid-a-1-1,"
                    f"{place.place_class},13911111111\n", encoding="utf-8")
    assert import_places_csv(session, path).updated == 1
    session.commit()
    [res] = push(client, login(client, "worker-a1"), op("place.upsert", _copy(place, 1, owner_name="x")))
    assert res["result"].get("kept") == {"owner_phone": "13911111111"}, res
    p = _fresh(session, place.id)
    assert (p.owner_phone, p.owner_name) == ("13911111111", "x")


def test_a_replayed_stale_edit_gets_its_first_answer(client, place):
    desk = login(client, "office-a", device="desk")
    assert client.patch(f"/api/v1/places/{place.id}", json={"owner_phone": "13900000001"},
                        headers=desk).status_code == 200
    worker = login(client, "worker-a1")
    o = op("place.upsert", _copy(place, 1, owner_name="x"))
    [res] = push(client, worker, o)
    assert res["result"]["kept"] == {"owner_phone": "13900000001"}, res
    [again] = push(client, worker, o)
    assert again["status"] == "duplicate" and again["result"] == res["result"]


def test_a_new_premises_with_a_base_version_is_made(client, units):
    worker = login(client, "worker-a1")
    o = op("place.upsert", {"id": uid(), "name": "新场所", "grid_id": units["grid-a-1-1"].id,
                            "place_class": "rental", "base_version": 7})
    [res] = push(client, worker, o)
    assert res["status"] == "applied" and "kept" not in res["result"] and res["result"]["version"] == 1, res


def test_a_move_to_another_grid_is_not_undone_by_a_stale_copy(client, session, units, place):
    """A worker who holds the whole community sees the premises in either grid; their phone's copy from
    before the office moved it names the old grid. Before, that edit moved it back (and its hazards with it)."""
    worker_user = session.exec(sa.select(User).where(User.username == "worker-a1")).scalar_one()
    worker_user.org_unit_id = units["community-a-1"].id
    session.commit()
    worker = login(client, "worker-a1")
    desk = login(client, "office-a", device="desk")
    to = units["grid-a-1-2"].id
    assert client.patch(f"/api/v1/places/{place.id}", json={"grid_id": to}, headers=desk).status_code == 200
    [res] = push(client, worker, op("place.upsert", _copy(place, 1, owner_name="赵老板")))
    assert res["result"]["kept"] == {"grid_id": to} and res["result"]["grid_id"] == to, res
    p = _fresh(session, place.id)
    assert (p.grid_id, p.owner_name) == (to, "赵老板")


def test_without_base_version_an_older_app_is_taken_at_its_word(client, session, place):
    desk = login(client, "office-a", device="desk")
    assert client.patch(f"/api/v1/places/{place.id}", json={"owner_phone": "13900000001"},
                        headers=desk).status_code == 200
    copy = _copy(place, 1)
    del copy["base_version"]
    [res] = push(client, login(client, "worker-a1"), op("place.upsert", copy))
    assert res["status"] == "applied" and "kept" not in res["result"], res
    assert _fresh(session, place.id).owner_phone == place.owner_phone


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migration_carries_the_class_version_over_and_back(backend, tmp_path):
    """And on SQLite, where the column is dropped by copying the table, with an inspection referring to a
    premises (foreign keys refused the copy's drop of the old table: migrations/env.py)."""
    url, cleanup = fresh_database_url(backend, tmp_path)
    engine = make_engine(url)
    place = ("INSERT INTO places (id, name, address, grid_id, town_id, community_id, place_class, owner_name, "
             "owner_phone, created_at, updated_at, version, class_version) VALUES (:id, 'p', '', 'g', 't', 'c', "
             "'rental', '', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, :version, :class_version)")
    try:
        migrate.upgrade(url, revision="0015")
        with engine.begin() as conn:
            for id_, kind, parent in (("t", "town", None), ("c", "community", "t"), ("g", "grid", "c")):
                conn.execute(sa.text("INSERT INTO org_units (id, code, name, kind, parent_id, enforcement_power) "
                                     "VALUES (:id, :id, :id, :kind, :parent, false)"),
                             {"id": id_, "kind": kind, "parent": parent})
            conn.execute(sa.text(place), [{"id": "reclassed", "version": 4, "class_version": 3},
                                          {"id": "never", "version": 2, "class_version": 1}])
            conn.execute(sa.text("INSERT INTO inspections (id, place_id, grid_id, town_id, started_at, checklist, "
                                 "created_at) VALUES ('i1', 'reclassed', 'g', 't', CURRENT_TIMESTAMP, '[]', "
                                 "CURRENT_TIMESTAMP)"))
        migrate.upgrade(url)
        with Session(engine) as s:
            assert s.get(Place, "reclassed").field_versions == {"place_class": [3, None]}
            assert s.get(Place, "never").field_versions == {}
        migrate.downgrade(url, revision="0015")
        with engine.connect() as conn:
            assert dict(conn.execute(sa.text("SELECT id, class_version FROM places")).all()) == {
                "reclassed": 3, "never": 1}
            assert conn.execute(sa.text("SELECT place_id FROM inspections")).scalar() == "reclassed"
    finally:
        engine.dispose()
        cleanup()


def _place_rows(changes: list[dict], place_id: str) -> list[dict]:
    return [c for c in changes if c["type"] == "place" and c["id"] == place_id and not c["deleted"]]


def test_a_stale_copys_edit_that_keeps_nothing_still_brings_the_stored_premises_back(client, session, units, place):
    """The office sets the premises' sector regulator (a field no phone sends) while the worker is offline; the
    phone, on version 1, writes down the owner's name. Nothing is kept, but the premises as stored is not the
    phone's copy with its edit: pull brings version 3, though the phone wrote it. (Once, only a kept field made
    it news: the pull brought the office's version 2 without the owner's name, and never version 3.)"""
    worker = login(client, "worker-a1")
    _, cursor, _ = pull_all(client, worker)
    regulator = session.execute(sa.select(OrgUnit).where(OrgUnit.code == "regulator-commerce")).scalar_one()
    desk = login(client, "office-a", device="desk")
    r = client.patch(f"/api/v1/places/{place.id}", json={"sector_regulator_id": regulator.id}, headers=desk)
    assert r.status_code == 200 and r.json()["version"] == 2, r.text

    [res] = push(client, worker, op("place.upsert", _copy(place, 1, owner_name="张老板")))
    assert res["status"] == "applied" and "kept" not in res["result"] and res["result"]["version"] == 3, res
    stored = _fresh(session, place.id)
    assert (stored.owner_name, stored.sector_regulator_id, stored.version) == ("张老板", regulator.id, 3)

    changes, _, _ = pull_all(client, worker, cursor)
    rows = _place_rows(changes, place.id)
    assert rows, "the office's change is not even delivered"
    last = rows[-1]["data"]
    # the phone must get the premises as stored (version 3: the regulator and its own owner's name)
    assert (last["version"], last["owner_name"], last["sector_regulator_id"]) == (3, "张老板", regulator.id), [
        (r["data"]["version"], r["data"]["owner_name"], r["data"]["sector_regulator_id"]) for r in rows]


def test_the_news_of_a_kept_edit_is_not_the_last_word_after_the_phones_next_own_edit(client, session, place):
    """Push 1 (a stale copy) keeps the office's owner phone and marks the premises as news (version 3). Before
    pulling, the worker corrects the address (push 2, from the same copy: version 4). The pull's last word on
    the premises is version 4, not the news of version 3: else the phone's copy would go back to the old
    address, and its next edit, from that copy, would send the old address as its own."""
    worker = login(client, "worker-a1")
    _, cursor, _ = pull_all(client, worker)
    desk = login(client, "office-a", device="desk")
    assert client.patch(f"/api/v1/places/{place.id}", json={"owner_phone": "13900000001"},
                        headers=desk).status_code == 200
    [r1] = push(client, worker, op("place.upsert", _copy(place, 1, owner_name="张老板")))
    assert r1["result"]["kept"] == {"owner_phone": "13900000001"}, r1
    # the phone put the kept value in its copy (README) and edits on, still offline of any pull
    [r2] = push(client, worker, op("place.upsert", _copy(place, 1, owner_name="张老板", owner_phone="13900000001",
                                                       address="新地址8号")))
    assert r2["status"] == "applied" and "kept" not in r2["result"] and r2["result"]["version"] == 4, r2

    changes, _, _ = pull_all(client, worker, cursor)
    rows = _place_rows(changes, place.id)
    last = rows[-1]["data"]
    assert (last["version"], last["address"]) == (4, "新地址8号"), [
        (r["data"]["version"], r["data"]["address"]) for r in rows]


def test_an_offices_blank_is_stripped_as_a_phones_and_is_not_the_phones_edit(client, session, place):
    """The office types the owner's name with a trailing blank: stored stripped, as a phone's push stores text.
    The phone, which has it so, corrects only the owner's phone: the name is not rewritten, nor counted as the
    phone's change. A name stored with the blank before (an older version) is the same text too."""
    desk = login(client, "office-a", device="desk")
    r = client.patch(f"/api/v1/places/{place.id}", json={"owner_name": " 张三 "}, headers=desk)
    assert r.status_code == 200 and r.json()["owner_name"] == "张三" and r.json()["version"] == 2, r.text
    worker = login(client, "worker-a1")
    [res] = push(client, worker, op("place.upsert", _copy(place, 2, owner_name="张三", owner_phone="13900000009")))
    assert res["status"] == "applied" and "kept" not in res["result"], res
    p = _fresh(session, place.id)
    assert (p.owner_phone, p.owner_name, p.field_versions["owner_name"]) == ("13900000009", "张三", [2, None])
    p.address = "老地址1号 "  # as stored before entries were stripped
    session.commit()
    [res] = push(client, worker, op("place.upsert", _copy(place, 3, address="老地址1号", owner_name="张三")))
    p = _fresh(session, place.id)
    assert (p.address, "address" in p.field_versions) == ("老地址1号 ", False), p.field_versions


def test_a_record_sent_back_as_it_is_writes_nothing(client, session, place):
    """A phone sends the whole premises with every edit, and may send it unchanged (saved again, an app that
    sends it with each inspection): no new version, and nothing new for any phone of the grid to pull. The
    same for a desk's PATCH that changes nothing."""
    other = login(client, "worker-a1", device="second-phone")
    _, cursor, _ = pull_all(client, other)
    worker = login(client, "worker-a1")
    [res] = push(client, worker, op("place.upsert", _copy(place, 1)))
    assert res["status"] == "applied" and res["result"]["version"] == 1 and "kept" not in res["result"], res
    desk = login(client, "office-a", device="desk")
    r = client.patch(f"/api/v1/places/{place.id}", json={"owner_name": place.owner_name}, headers=desk)
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    assert _fresh(session, place.id).version == 1
    changes, _, _ = pull_all(client, other, cursor)
    assert _place_rows(changes, place.id) == []


def test_a_stale_edit_whose_every_change_is_kept_writes_nothing_and_brings_the_premises_back(client, session, place):
    worker = login(client, "worker-a1")
    _, cursor, _ = pull_all(client, worker)
    desk = login(client, "office-a", device="desk")
    assert client.patch(f"/api/v1/places/{place.id}", json={"owner_phone": "13900000001"},
                        headers=desk).json()["version"] == 2
    [res] = push(client, worker, op("place.upsert", _copy(place, 1)))  # its copy as it was: the old number
    assert (res["result"]["kept"], res["result"]["version"]) == ({"owner_phone": "13900000001"}, 2), res
    assert _fresh(session, place.id).version == 2
    changes, _, _ = pull_all(client, worker, cursor)
    *_, last = _place_rows(changes, place.id)
    assert (last["data"]["version"], last["data"]["owner_phone"]) == (2, "13900000001")
