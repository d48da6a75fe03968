"""Working-day overrides, the policy file at start-up, the quarterly major-hazard list."""

from datetime import datetime, timedelta, timezone

import pytest

from app.config import Settings
from app.main import create_app
from app.referrals.policy import PolicyError
from tests.conftest import login
from tests.helpers import place_of, report

CN = timezone(timedelta(hours=8))


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=CN)


def test_admin_override_moves_deadlines(clocked_client, clock, session, units):
    """A year the calendar package does not know: admins declare its holidays and the clocks follow."""
    c = clocked_client
    admin = login(c, "admin")
    r = c.put("/api/v1/calendar/overrides", json=[{"day": "2099-01-02", "is_workday": False, "note": "元旦假期"}],
              headers=login(c, "office-a"))
    assert r.status_code == 403
    r = c.put("/api/v1/calendar/overrides", json=[{"day": "2099-01-02", "is_workday": False, "note": "元旦假期"}],
              headers=admin)
    assert r.status_code == 200 and r.json()[0]["day"] == "2099-01-02"
    clock.now = at("2099-01-01T09:00")  # a Thursday; Friday the 2nd is now a holiday
    place = place_of(session, units, "grid-a-1-1", "rental")
    res = report(c, login(c, "worker-a1"), place.id, at("2099-01-01T08:00"))
    # Thursday 1st + 1 working day, skipping the Friday holiday and the weekend: end of Monday the 5th
    assert res["ack_due"] == "2099-01-05T16:00:00+00:00"


def test_categories_and_policy_are_published(client):
    h = login(client, "worker-a1")
    cats = client.get("/api/v1/categories", headers=h).json()
    assert "blocked_exit" in {c["code"] for c in cats}
    assert all(c["name_zh"] and c["default_rectify_workdays"] > 0 for c in cats)
    pol = client.get("/api/v1/policy", headers=h).json()
    assert pol["version"] and pol["rules"][-1]["id"] == "town-office-default"


def test_bad_policy_file_stops_start_up_naming_the_problem(db, tmp_path):
    bad = tmp_path / "policy.toml"
    bad.write_text('version = "x"\nplace_classes = ["rental"]\n[rectification_workdays]\ndefault = 5\n'
                   '[[categories]]\ncode = "c"\nname_zh = "c"\nname_en = "c"\n'
                   '[[rules]]\nid = "only"\ntier = "mayor"\nreason_zh = "z"\nreason_en = "e"\n', encoding="utf-8")
    with pytest.raises(PolicyError) as exc:
        create_app(Settings(database_url="sqlite:///unused", policy_file=bad), db)
    text = str(exc.value)
    assert "policy.toml" in text and "only" in text and "tier" in text


def test_quarterly_major_hazard_list(clocked_client, clock, session, units):
    c = clocked_client
    worker = login(c, "worker-a1")
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    clock.now = at("2026-02-10T09:00")
    q1 = report(c, worker, place.id, at("2026-02-10T08:00"), severity="major", category="sandwich_panel")["hazard_id"]
    clock.now = at("2026-04-10T09:00")
    q2 = report(c, worker, place.id, at("2026-04-10T08:00"), severity="major", category="missing_sprinkler")["hazard_id"]
    general = report(c, worker, place.id, at("2026-04-10T08:00"))["hazard_id"]
    brigade = login(c, "brigade")
    listed_q1 = [i["id"] for i in c.get("/api/v1/reports/major-hazards", params={"year": 2026, "quarter": 1}, headers=brigade).json()]
    listed_q2 = [i["id"] for i in c.get("/api/v1/reports/major-hazards", params={"year": 2026, "quarter": 2}, headers=brigade).json()]
    assert listed_q1 == [q1]
    assert listed_q2 == [q1, q2]  # q1 is still open in Q2, so it is listed again
    assert general not in listed_q2
    assert c.get("/api/v1/reports/major-hazards", params={"year": 2026, "quarter": 2},
                 headers=login(c, "office-b")).json() == []
    assert c.get("/api/v1/reports/major-hazards", params={"year": 2026, "quarter": 5}, headers=brigade).status_code == 422


def test_calendar_status_names_years_without_a_schedule(clocked_client, clock):
    from app.referrals.calendar import package_last_year

    c = clocked_client
    last = package_last_year()
    clock.now = datetime(last, 12, 1, 9, 0, tzinfo=CN)
    admin = login(c, "admin")
    status = c.get("/api/v1/calendar/status", headers=admin).json()
    assert status["package_last_year"] == last and status["missing_years"] == [last + 1]
    c.put("/api/v1/calendar/overrides", json=[{"day": f"{last + 1}-01-01", "is_workday": False, "note": "元旦"}],
          headers=admin)
    assert c.get("/api/v1/calendar/status", headers=admin).json()["missing_years"] == []
