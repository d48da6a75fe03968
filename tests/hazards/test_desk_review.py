"""The desk side under review: who may act on or see what, and odd input answered 4xx, not 500."""

import base64
import json
from datetime import timedelta

import pytest

from app.org.models import UnitKind
from app.org.service import create_unit
from tests.conftest import login
from tests.helpers import place_of, report
from tests.hazards.test_actions import at, hazard  # noqa: F401  (hazard: a fixture)
from tests.referrals.test_relocation_races import pg  # noqa: F401  (fixture)



@pytest.fixture
def other_county(session, units):
    """A second county with its brigade, a sector regulator and a town with its office and station."""
    county = create_unit(session, code="county-x", name="邻区", kind=UnitKind.county, parent=None)
    town = create_unit(session, code="town-x", name="邻镇", kind=UnitKind.town, parent=county)
    out = {
        "county": county, "town": town,
        "brigade": create_unit(session, code="brigade-x", name="邻区消防救援大队", kind=UnitKind.brigade, parent=county),
        "regulator": create_unit(session, code="regulator-x", name="邻区教委", kind=UnitKind.sector_regulator,
                                 parent=county, sector="education"),
        "office": create_unit(session, code="office-x", name="邻镇办", kind=UnitKind.town_office, parent=town),
        "police": create_unit(session, code="police-x", name="邻镇派出所", kind=UnitKind.police_station, parent=town),
    }
    session.commit()
    return out


def action(c, hid, who, **body):
    return c.post(f"/api/v1/hazards/{hid}/actions", json=body, headers=login(c, who))


# -- jurisdiction ------------------------------------------------------------------------------


def test_a_transfer_stays_in_the_hazards_county(clocked_client, hazard, units, other_county):
    c = clocked_client
    r = action(c, hazard, "office-a", action="transfer", to_unit_id=other_county["office"].id, reason="不归我们管")
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_transfer_target"
    assert r.json()["error"]["field"] == "to_unit_id"
    action(c, hazard, "office-a", action="escalate")
    r = action(c, hazard, "police-a", action="transfer", to_unit_id=other_county["police"].id, reason="x")
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_transfer_target"
    d = c.get(f"/api/v1/hazards/{hazard}", headers=login(c, "police-a")).json()
    assert d["holder_org_unit_id"] == units["police-a"].id and d["tier"] == "police_station"


def test_a_brigade_hazard_is_not_handed_to_another_countys_brigade(clocked_client, session, units, other_county):
    c = clocked_client
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    res = report(c, login(c, "worker-a1"), place.id, at("2026-03-02T08:00"), severity="major",
                 category="insufficient_exits")
    assert res["holder_org_unit_id"] == units["brigade"].id
    r = action(c, res["hazard_id"], "brigade", action="transfer", to_unit_id=other_county["brigade"].id, reason="x")
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_transfer_target"


def test_a_grid_worker_records_a_reinspection_but_does_not_move_the_holders_deadline(clocked_client, hazard):
    c = clocked_client
    action(c, hazard, "office-a", action="accept")
    ordered = action(c, hazard, "office-a", action="order_rectification", deadline="2026-03-10T18:00:00+08:00")
    assert ordered.status_code == 200
    r = action(c, hazard, "worker-a1", action="record_reinspection", rectified=False,
               deadline="2027-12-31T18:00:00+08:00", note="还没改")
    assert r.status_code == 403 and r.json()["error"]["field"] == "deadline"
    d = c.get(f"/api/v1/hazards/{hazard}", headers=login(c, "office-a")).json()
    assert d["clocks"]["rectify"]["due"] == "2026-03-10T10:00:00Z"
    # without a date it is the 复查 it always was
    r = action(c, hazard, "worker-a1", action="record_reinspection", rectified=False, note="还没改")
    assert r.status_code == 200 and r.json()["clocks"]["rectify"]["due"] == "2026-03-10T10:00:00Z"
    # the holder may still set a new date when it re-inspects
    r = action(c, hazard, "office-a", action="record_reinspection", rectified=False, deadline="2026-03-20T18:00:00+08:00")
    assert r.status_code == 200 and r.json()["clocks"]["rectify"]["due"] == "2026-03-20T10:00:00Z"


def test_a_town_office_neither_lists_nor_revokes_the_phones_of_the_county_staff(client):
    brigade = login(client, "brigade", device="brigade-phone")
    admin = login(client, "admin", device="admin-pc")
    office = login(client, "office-a")
    worker = login(client, "worker-a1", device="worker-phone")
    listed = {d["device_key"] for d in client.get("/api/v1/devices", headers=office).json()}
    assert "worker-phone" in listed  # its own town's phones
    assert not {"brigade-phone", "admin-pc"} & listed
    for headers in (brigade, admin):
        device_id = client.get("/api/v1/me", headers=headers).json()["device_id"]
        r = client.post(f"/api/v1/devices/{device_id}/revoke", headers=office)
        assert r.status_code == 404
        assert client.get("/api/v1/me", headers=headers).status_code == 200
    assert client.get("/api/v1/me", headers=worker).status_code == 200


def test_a_premises_is_not_put_under_another_countys_regulator(client, units, other_county, session):
    office = login(client, "office-a")
    body = {"name": "新开托管班", "grid_id": units["grid-a-1-1"].id, "place_class": "nine_small",
            "sector_regulator_id": other_county["regulator"].id}
    r = client.post("/api/v1/places", json=body, headers=office)
    assert r.status_code == 422 and r.json()["error"]["field"] == "sector_regulator_id"
    ok = client.post("/api/v1/places", json={**body, "sector_regulator_id": units["regulator-education"].id},
                     headers=office)
    assert ok.status_code == 201
    r = client.patch(f"/api/v1/places/{ok.json()['id']}", json={"sector_regulator_id": other_county["regulator"].id},
                     headers=office)
    assert r.status_code == 422 and r.json()["error"]["field"] == "sector_regulator_id"


# -- odd input is a 4xx naming what is wrong -----------------------------------------------------


def _cursor(values) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


@pytest.mark.parametrize("due", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00"])
def test_a_queue_cursor_with_a_time_out_of_range_is_a_bad_cursor(clocked_client, hazard, due):
    r = clocked_client.get("/api/v1/queue", params={"cursor": _cursor([due, "2026-03-02T01:00:00+00:00", hazard])},
                           headers=login(clocked_client, "office-a"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_cursor"


@pytest.mark.parametrize("values", [[None, {"a": 1}], ["名", 7], ["[" * 5000]])
def test_a_places_cursor_that_is_not_a_name_and_an_id_is_a_bad_cursor(client, values):
    cursor = _cursor(values) if values != ["[" * 5000] else base64.urlsafe_b64encode(values[0].encode()).decode()
    r = client.get("/api/v1/places", params={"cursor": cursor}, headers=login(client, "office-a"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_cursor", r.text


@pytest.mark.parametrize("params,field", [
    ({"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00"}, "to"),
    ({"from": "2026-01-01T00:00:00"}, "from"),
    ({"to": "0001-01-02T00:00:00Z"}, "to"),
    ({"from": "0001-01-01T00:00:00+01:00"}, "from"),
    ({"to": "9999-12-31T23:59:59-05:00"}, "to"),
])
def test_figures_for_a_period_without_offset_or_out_of_range_are_422(clocked_client, hazard, params, field):
    r = clocked_client.get("/api/v1/figures", params=params, headers=login(clocked_client, "office-a"))
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]


@pytest.mark.parametrize("deadline", ["9999-12-31T23:59:59+00:00", "9999-12-30T00:00:00-12:00"])
def test_a_deadline_past_the_calendars_end_is_422(clocked_client, hazard, deadline):
    c = clocked_client
    action(c, hazard, "office-a", action="accept")
    r = action(c, hazard, "office-a", action="order_rectification", deadline=deadline)
    assert r.status_code == 422 and r.json()["error"]["field"] == "deadline"
    assert c.get(f"/api/v1/hazards/{hazard}", headers=login(c, "office-a")).json()["status"] == "accepted"


# -- two writers at once, on a real PostgreSQL -------------------------------------------------


def test_a_merge_into_a_hazard_dismissed_meanwhile_is_refused(pg, tmp_path):
    """The original is checked open under its row lock: one read before another desk closed or
    dismissed it would merge the duplicate into a finished hazard, and its report would go nowhere."""
    import threading
    import time

    import sqlalchemy as sa
    from fastapi.testclient import TestClient
    from sqlmodel import Session

    from app.audit.service import Actor
    from app.config import Settings
    from app.db import Database
    from app.hazards.models import Hazard
    from app.main import create_app
    from app.referrals.lifecycle import Action, ActionParams
    from app.referrals.service import act, lock_hazard
    from tests.referrals.test_relocation import NOW

    duplicate, original = pg.report(), pg.report()
    settings = Settings(database_url="sqlite:///unused", storage_dir=tmp_path / "blobs", secret_key="t" * 40,
                        env="dev", sweep_interval_seconds=0)
    answers = []
    with TestClient(create_app(settings, Database(pg.engine), clock=lambda: NOW), raise_server_exceptions=False) as c:
        office = login(c, "office-a")
        held = pg.session()
        try:
            act(held, pg.rules, lock_hazard(held, original), Action.DISMISS,
                ActionParams(reason="经核实不构成隐患", town_office_signoff=True), Actor.system(), NOW)
            held.flush()
            t = threading.Thread(target=lambda: answers.append(c.post(
                f"/api/v1/hazards/{duplicate}/actions", json={"action": "merge", "merge_into_id": original},
                headers=office)))
            t.start()
            for _ in range(200):  # until the merge waits for the dismissal's lock (or is done)
                with pg.engine.connect() as watch:  # a connection per look: a transaction sees one snapshot
                    waiting = watch.execute(sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()")).scalar()
                if waiting or not t.is_alive():
                    break
                time.sleep(0.05)
            held.commit()
        finally:
            held.close()
        t.join(30)
    assert not t.is_alive()
    [r] = answers
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_merge_target", r.text
    with Session(pg.engine) as s:
        assert s.get(Hazard, duplicate).status == "referred"
        assert s.get(Hazard, original).status == "dismissed"


# -- the sweep -----------------------------------------------------------------------------------


def test_one_hazard_the_sweep_cannot_escalate_does_not_hold_up_the_others(db, session, units, clocked_client, clock):
    """A town with no police station configured yet: its overdue hazard has nowhere to go up to. The
    other towns' overdue hazards are escalated all the same, and the stuck one is on record."""
    from app.places.models import Place
    from app.referrals.policy import load_policy
    from app.referrals.sweeper import run_sweep
    from tests.helpers import uid

    c = clocked_client
    town = create_unit(session, code="town-n", name="新设镇", kind=UnitKind.town, parent=units["county"])
    create_unit(session, code="office-n", name="新设镇办", kind=UnitKind.town_office, parent=town)
    community = create_unit(session, code="community-n-1", name="新社区", kind=UnitKind.community, parent=town)
    grid = create_unit(session, code="grid-n-1-1", name="新网格", kind=UnitKind.grid, parent=community)
    place = Place(id=uid(), name="新镇出租屋", address="新路1号", grid_id=grid.id, town_id=town.id,
                  community_id=community.id, place_class="rental")
    session.add(place)
    session.commit()
    clock.now = at("2026-03-02T09:00")
    stuck = report(c, login(c, "admin"), place.id, at("2026-03-02T08:00"))["hazard_id"]
    clock.now = at("2026-03-02T09:30")
    ours = report(c, login(c, "worker-a1"), place_of(session, units, "grid-a-1-1", "rental").id,
                  at("2026-03-02T09:00"))["hazard_id"]
    later = at("2026-03-10T09:00")
    done = run_sweep(db, load_policy(), later)
    assert [e.hazard_id for e in done] == [ours]
    admin = login(c, "admin")
    assert c.get(f"/api/v1/hazards/{ours}", headers=admin).json()["tier"] == "police_station"
    d = c.get(f"/api/v1/hazards/{stuck}", headers=admin).json()
    assert d["tier"] == "town_office" and d["attention"] >= 1
    assert d["timeline"][-1]["kind"] == "escalation_failed" and d["timeline"][-1]["flagged"]
    assert run_sweep(db, load_policy(), later) == []  # tried once, not on every sweep
    # a day later it is tried again, and on record once
    assert run_sweep(db, load_policy(), later + timedelta(days=1, minutes=1)) == []
    d = c.get(f"/api/v1/hazards/{stuck}", headers=admin).json()
    assert [e["kind"] for e in d["timeline"]].count("escalation_failed") == 1 and d["tier"] == "town_office"
    # once the town has its police station, the next day's sweep takes it up without anyone acting first
    station = create_unit(session, code="police-n", name="新设镇派出所", kind=UnitKind.police_station, parent=town)
    session.commit()
    assert stuck in [e.hazard_id for e in run_sweep(db, load_policy(), later + timedelta(days=2, minutes=2))]
    d = c.get(f"/api/v1/hazards/{stuck}", headers=admin).json()
    assert (d["tier"], d["holder_org_unit_id"]) == ("police_station", station.id), d
