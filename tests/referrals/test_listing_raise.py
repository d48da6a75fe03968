"""DOMAIN.md, Procedure: "still not rectified | listed supervision by the government; after six months, by the
next level up". A listed hazard the brigade holds has no tier left to escalate to; six months after it was listed,
still open, the sweep raises its listing once: an event on its timeline, the holder's attention, the time kept."""

import pytest
import sqlalchemy as sa

from app.audit.models import HazardEvent
from app.hazards.models import Hazard
from tests.conftest import login
from tests.referrals.test_domain_review import action, at, get, new_hazard, run_sweep, zulu


def _major(c, clock, session, units, when="2026-03-02T09:00") -> dict:
    hz = new_hazard(c, clock, session, units, when, place_class="crowded", category="insufficient_exits",
                    severity="major")
    assert hz["tier"] == "brigade"
    return hz


def test_a_listed_hazard_still_open_six_months_on_is_raised_once(clocked_client, clock, session, units):
    c = clocked_client
    hz = _major(c, clock, session, units)
    brigade = login(c, "brigade")
    assert action(c, hz["id"], brigade, action="accept").status_code == 200
    r = action(c, hz["id"], brigade, action="order_rectification", deadline="2026-04-30T18:00:00+08:00")
    assert r.status_code == 200, r.text
    d = get(c, hz["id"], brigade)
    assert zulu(d["listed_at"]) == at("2026-03-02T09:00") and d["listing_raised_at"] is None

    assert [e for e in run_sweep(session, at("2026-09-02T08:59")) if e.hazard_id == hz["id"]] == []
    [raised] = [e for e in run_sweep(session, at("2026-09-02T09:00")) if e.hazard_id == hz["id"]]
    assert raised.listing_raised and raised.to_tier is None and raised.from_tier == "brigade"
    d = get(c, hz["id"], brigade)
    assert zulu(d["listing_raised_at"]) == at("2026-09-02T09:00")
    assert d["holder_org_unit_id"] == units["brigade"].id and d["status"] == "rectifying"  # not a hop
    [ev] = [e for e in d["timeline"] if e["kind"] == "listing_raised"]
    assert ev["data"]["months"] == 6 and "上一级挂牌督办" in ev["data"]["reason"]
    assert session.get(Hazard, hz["id"]).attention >= 1
    assert [e for e in run_sweep(session, at("2027-03-02T09:00")) if e.hazard_id == hz["id"]] == []  # once


def test_a_listed_hazard_closed_within_six_months_is_never_raised(clocked_client, clock, session, units):
    c = clocked_client
    hz = _major(c, clock, session, units)
    brigade = login(c, "brigade")
    assert action(c, hz["id"], brigade, action="accept").status_code == 200
    r = action(c, hz["id"], brigade, action="record_reinspection", rectified=True, photos=["a" * 64])
    assert r.status_code == 200 and r.json()["status"] == "closed", r.text
    assert session.get(Hazard, hz["id"]).escalate_at is None
    assert [e for e in run_sweep(session, at("2026-12-01T09:00")) if e.hazard_id == hz["id"]] == []


def test_six_months_count_from_the_county_listing_not_the_report(clocked_client, clock, session, units):
    """A general hazard that went up every tier and then to the county's listed supervision: its six months
    start at that listing."""
    c = clocked_client
    hz = new_hazard(c, clock, session, units, "2026-03-02T09:00", place_class="key_unit_1", category="ebike_indoor")
    assert hz["tier"] == "brigade"
    clock.now = at("2026-03-04T09:00")  # the brigade never reported in: past it, the county lists it
    [esc] = [e for e in run_sweep(session, clock.now) if e.hazard_id == hz["id"]]
    assert esc.to_tier is None and not esc.listing_raised
    d = get(c, hz["id"], login(c, "brigade"))
    assert zulu(d["listed_at"]) == at("2026-03-04T09:00")
    assert [e for e in run_sweep(session, at("2026-09-03T09:00")) if e.hazard_id == hz["id"]] == []
    [raised] = [e for e in run_sweep(session, at("2026-09-04T09:00")) if e.hazard_id == hz["id"]]
    assert raised.listing_raised


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0021_dates_the_listings_stored_before(backend, tmp_path):
    """Hazards listed before: listed when reported, or when the escalation that listed them was (its event),
    and those the brigade holds open are due for the raise six months on."""
    from app import migrate
    from tests.test_migrations import seeded_database

    with seeded_database(backend, tmp_path) as (url, engine):
        with engine.begin() as conn:
            listed = conn.execute(sa.select(Hazard.id, Hazard.created_at).where(
                Hazard.listed_supervision, Hazard.tier == "brigade",
                Hazard.status.in_(("referred", "accepted", "rectifying", "reinspection_due")))
                .order_by(Hazard.id)).all()
            assert listed, "the demo has listed hazards at the brigade"
            county_listed = listed[0].id  # as if listed by an escalation past the brigade, later
            conn.execute(sa.insert(HazardEvent.__table__).values(
                hazard_id=county_listed, seq=10_000, kind="escalated", server_time=at("2026-05-05T10:00"),
                data={"effects": [{"kind": "county_listed_supervision"}]}, flagged=False, prev_hash="", hash=""))
        migrate.downgrade(url, revision="0020")
        with engine.begin() as conn:  # as code before 0021 left them: nothing for the sweep
            conn.execute(sa.text("UPDATE hazards SET escalate_at = NULL WHERE listed_supervision AND tier = 'brigade'"))
        migrate.upgrade(url)
        with engine.connect() as conn:
            got = {r.id: r for r in conn.execute(sa.select(Hazard.id, Hazard.listed_at, Hazard.escalate_at)
                                                 .where(Hazard.id.in_([h.id for h in listed])))}
        assert got[county_listed].listed_at == at("2026-05-05T10:00")
        assert got[county_listed].escalate_at == at("2026-11-05T10:00")
        for h in listed[1:]:
            assert got[h.id].listed_at == h.created_at
            assert got[h.id].escalate_at is not None and got[h.id].escalate_at > h.created_at


def test_the_sweep_command_says_what_it_raised(tmp_path, monkeypatch):
    from datetime import timedelta

    from typer.testing import CliRunner

    from app.cli import cli
    from app.config import get_settings
    from app.db import utcnow

    monkeypatch.setenv("FIREGRID_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        assert runner.invoke(cli, ["migrate"]).exit_code == 0
        assert runner.invoke(cli, ["seed-demo"]).exit_code == 0
        later = (utcnow() + timedelta(days=200)).isoformat()  # the demo's listed hazards, unrectified since
        r = runner.invoke(cli, ["sweep", "--now", later])
        assert r.exit_code == 0, r.output
        assert "listed supervision raised to the next level up" in r.output
        assert "; raised " in r.output and " listings" in r.output
        again = runner.invoke(cli, ["sweep", "--now", later])
        assert "raised" not in again.output.splitlines()[-1]
    finally:
        get_settings.cache_clear()
