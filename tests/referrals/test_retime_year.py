"""`firegrid calendar retime YEAR`: after the chinese-calendar package learns a year's schedule (an upgrade), the
running clocks counted while it did not (Monday–Friday, less the law's days off since they are known here)
are counted again. 2026 stands for such a year: its clocks are set back to what a count without the
schedule gave, then re-timed."""

from datetime import date, datetime, timezone

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from app.cli import cli
from app.config import get_settings
from app.errors import Invalid
from app.hazards.models import Hazard
from app.referrals.calendar import WorkCalendar
from app.referrals.service import retime_year
from tests.referrals.test_retime import at, events, new_hazard, row, utc


class _NoPackage(WorkCalendar):
    """The calendar as it counted while the package had no 2026: Monday–Friday (the plain guess)."""

    def is_workday(self, d: date) -> bool:
        return d.weekday() < 5 if d not in self.overrides else self.overrides[d]


def _as_counted_without_the_schedule(session, hid: str) -> datetime:
    h = row(session, hid)
    due = _NoPackage().add_workdays(h.created_at.replace(tzinfo=timezone.utc), 1)
    session.execute(sa.update(Hazard).where(Hazard.id == hid).values(ack_due=due, next_due=due, escalate_at=due))
    session.commit()
    return due


def test_a_clock_counted_before_the_package_knew_the_year_is_counted_again(clocked_client, clock, session, units):
    # Wednesday 30 September 2026, the eve of 国庆: the schedule gives 1-8 October off
    hid = new_hazard(clocked_client, clock, session, units, "2026-09-30T09:00")
    right = row(session, hid).ack_due
    assert right == utc("2026-10-08T16:00")  # end of Thursday 8 October
    assert _as_counted_without_the_schedule(session, hid) == utc("2026-10-01T16:00")

    assert retime_year(session, 2026, now=at("2026-09-30T10:00")) == [hid]
    session.commit()
    h = row(session, hid)
    assert h.ack_due == h.next_due == h.escalate_at == right
    [ev] = events(session, hid, "clocks_retimed")
    assert ev.data["clocks"]["ack"]["new_due"].startswith("2026-10-08T16:00")
    assert {"day": "2026-10-01", "is_workday": False} in ev.data["changed_days"]

    assert retime_year(session, 2026, now=at("2026-09-30T11:00")) == []  # run again: nothing moves
    session.commit()
    assert len(events(session, hid, "clocks_retimed")) == 1


@pytest.mark.parametrize("year", [2099, 2003, 0, -1, 10000])
def test_a_year_the_package_does_not_know_is_refused(session, year):
    with pytest.raises(Invalid) as exc:
        retime_year(session, year)
    assert exc.value.code == "unknown_year" and f"for {year} " in exc.value.message


@pytest.fixture
def env_db(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREGRID_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_command(env_db):
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate"]).exit_code == 0
    done = runner.invoke(cli, ["calendar", "retime", "2026"])
    assert done.exit_code == 0, done.output
    assert "0 hazards' clocks re-timed for 2026" in done.output
    for year in ("2099", "0"):
        refused = runner.invoke(cli, ["calendar", "retime", year])
        assert refused.exit_code == 2 and f"no schedule for {year} " in refused.output, refused.output
