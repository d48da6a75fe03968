"""Reference data an admin keeps (working-day overrides) and the operator's commands, from an adversarial
review (2026-12-01)."""

from datetime import date

import pytest

from sqlmodel import select

from app.referrals.models import WorkdayOverride
from app.referrals.service import save_overrides
from tests.conftest import login
from tests.referrals.test_relocation_races import pg  # noqa: F401  (fixture: a fresh PostgreSQL, two writers)


def test_a_nul_in_an_overrides_note_is_a_422_naming_it_on_either_backend(client, session):
    """SQLite stored it; PostgreSQL refused it with a message that named no field."""
    r = client.put("/api/v1/calendar/overrides", json=[{"day": "2099-01-02", "is_workday": False, "note": "元旦\u0000"}],
                   headers=login(client, "admin"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == "0.note"
    assert session.get(WorkdayOverride, date(2099, 1, 2)) is None


def test_a_day_given_twice_is_stored_once_the_last_winning(client):
    admin = login(client, "admin")
    r = client.put("/api/v1/calendar/overrides", json=[{"day": "2099-01-02", "is_workday": False, "note": "a"},
                                                      {"day": "2099-01-02", "is_workday": True, "note": "b"}],
                   headers=admin)
    assert r.status_code == 200, r.text
    assert [o for o in r.json() if o["day"] == "2099-01-02"] == [{"day": "2099-01-02", "is_workday": True, "note": "b"}]
    r = client.put("/api/v1/calendar/overrides", json=[{"day": "2099-01-02", "is_workday": False, "note": "c"}],
                   headers=admin)
    assert [o for o in r.json() if o["day"] == "2099-01-02"] == [{"day": "2099-01-02", "is_workday": False, "note": "c"}]


def test_two_admins_adding_the_same_new_day_at_once_both_succeed_on_postgresql(pg):  # noqa: F811
    """merge() looked the day up and then INSERTed: the second admin's INSERT waited for the first one's
    and then failed on the primary key, a 500 for a request that had nothing wrong with it."""
    held, writer = pg.session(), pg.session()
    save_overrides(held, [(date(2099, 10, 8), False, "国庆")])
    pg.race(held, writer, lambda: save_overrides(writer, [(date(2099, 10, 8), True, "调休上班")]))
    with pg.session() as s:
        rows = s.exec(select(WorkdayOverride).where(WorkdayOverride.day == date(2099, 10, 8))).all()
        assert [(o.is_workday, o.note) for o in rows] == [(True, "调休上班")]  # the later commit wins


def test_a_note_stored_with_a_nul_before_the_check_is_still_listed(client, session, backend):
    """The check is on what comes in: a note SQLite stored before it must not make the list a 500 (the
    response model is validated too)."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL never stored one")
    session.add(WorkdayOverride(day=date(2099, 1, 3), is_workday=False, note="旧\u0000"))
    session.commit()
    r = client.get("/api/v1/calendar/overrides", headers=login(client, "admin"))
    assert r.status_code == 200, r.text
    assert {"day": "2099-01-03", "is_workday": False, "note": "旧\u0000"} in r.json()
