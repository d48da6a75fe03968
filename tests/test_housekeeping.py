"""What the periodic sweep does besides escalating: expired login failures are forgotten (they count
toward no limit; kept, a spray of wrong passwords would grow the table for good), a failing chore
stops neither the loop nor the chores after it; and the start-up warning about missing holiday
schedules counts years by the local (Shanghai) date, as /calendar/status does."""

import asyncio
import logging
import threading
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlmodel import select

from app.auth import service as auth_service
from app.auth.models import LoginFailure
from app.main import create_app
from app.referrals import sweeper
from app.referrals.calendar import package_last_year

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_failures_older_than_the_window_are_forgotten_and_the_rest_still_count(session, settings):
    window = timedelta(minutes=settings.login_window_minutes)
    for age, who in [(window + timedelta(seconds=1), "old"), (window * 10, "older"),
                     (window - timedelta(seconds=1), "recent")]:
        session.add(LoginFailure(username=who, address="203.0.113.1", at=NOW - age))
    session.flush()
    assert auth_service.forget_old_failures(session, settings, NOW) == 2
    assert session.exec(select(LoginFailure.username)).all() == ["recent"]


def test_the_periodic_sweep_runs_its_chores_and_a_failing_one_stops_nothing(monkeypatch, caplog):
    monkeypatch.setattr(sweeper, "run_sweep", lambda db, policy, now: [])
    seen: list[datetime] = []

    def broken(now):
        raise RuntimeError("disk full")

    async def main():
        def record(now):
            seen.append(now)
            if len(seen) == 2:  # the loop went round twice: the broken chore stopped neither it nor this one
                task.cancel()

        task = asyncio.create_task(sweeper.periodic_sweep(None, None, lambda: NOW, 0.001, chores=[broken, record]))
        try:
            await asyncio.wait_for(task, 10)
        except asyncio.CancelledError:
            pass

    with caplog.at_level(logging.ERROR, logger="firegrid.sweep"):
        # a thread of its own: the browser tests leave an event loop running in this one
        runner = threading.Thread(target=asyncio.run, args=(main(),))
        runner.start()
        runner.join()
    assert seen == [NOW, NOW]
    assert "periodic chore broken failed" in caplog.text


def test_the_start_up_warning_counts_years_by_the_local_date(db, settings, caplog):
    """New Year's Day 01:00 in Shanghai is still 31 December in UTC: the year that has begun and the one
    after it are the ones to warn about."""
    new_year = package_last_year() + 1
    at = datetime(new_year - 1, 12, 31, 17, 0, tzinfo=UTC)  # 01:00 on 1 January, Shanghai
    with caplog.at_level(logging.WARNING, logger="firegrid"):
        with TestClient(create_app(settings, db, clock=lambda: at)):
            pass
    assert f"no holiday schedule for [{new_year}, {new_year + 1}]" in caplog.text
