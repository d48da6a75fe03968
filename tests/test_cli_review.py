"""The `firegrid` commands, from an adversarial review (2026-12-01): `sweep --now` out of range or, in
production, in the future."""

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from app.audit.models import HazardEvent
from app.cli import cli
from app.config import get_settings
from app.db import make_engine
from tests.test_cli import env_db  # noqa: F401  (fixture: a SQLite file configured by environment)


def _escalations(url: str) -> int:
    engine = make_engine(url)
    with Session(engine) as s:
        n = len(s.exec(select(HazardEvent.id).where(HazardEvent.kind == "escalated")).all())
    engine.dispose()
    return n


@pytest.fixture
def seeded(env_db):  # noqa: F811
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate"]).exit_code == 0
    assert runner.invoke(cli, ["seed-demo"]).exit_code == 0
    return env_db


@pytest.mark.parametrize("now", ["0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59+00:00"])
def test_sweep_now_out_of_range_is_refused_naming_it_not_a_traceback(seeded, now):
    """The first has no UTC instant, the second overflowed the working-day arithmetic: both ended in a
    stack trace (exit 1) instead of a message."""
    result = CliRunner().invoke(cli, ["sweep", "--now", now])
    assert result.exit_code == 2, result.output
    assert "--now" in result.output and "out of range" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_prod_refuses_to_sweep_as_of_a_future_time(seeded, monkeypatch):
    """As of a time still to come, every hazard whose clock runs out before it went up for good, its timeline
    saying its clocks were overdue: in production --now may only catch up on the past."""
    monkeypatch.setenv("FIREGRID_ENV", "prod")
    monkeypatch.setenv("FIREGRID_SECRET_KEY", "s" * 40)
    get_settings.cache_clear()
    result = CliRunner().invoke(cli, ["sweep", "--now", "2999-01-07T09:00:00+08:00"])
    assert result.exit_code == 2, result.output
    assert "future" in result.output
    assert _escalations(seeded) == 0
    past = CliRunner().invoke(cli, ["sweep", "--now", "2026-01-07T09:00:00+08:00"])
    assert past.exit_code == 0, past.output


def test_dev_still_sweeps_as_of_a_future_time(seeded):
    result = CliRunner().invoke(cli, ["sweep", "--now", "2999-01-07T09:00:00+08:00"])
    assert result.exit_code == 0, result.output
    assert _escalations(seeded) > 0
