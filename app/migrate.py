"""Run Alembic from code (the CLI, the tests and the demo command share this)."""

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(url: str | None = None, connection: Connection | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url, connection), revision)


def downgrade(url: str | None = None, connection: Connection | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url, connection), revision)


SEALS_REVISION = "0020"  # hazard_events.mac: the audit chain's seals (app/audit/service.py seal_unsealed)


def current_revision(url: str) -> str | None:
    """The revision the database is at (None: not migrated at all)."""
    from app.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except sa.exc.OperationalError:  # a SQLite file not made yet
        return None
    finally:
        engine.dispose()


def crossed(before: str | None, after: str | None, revision: str) -> bool:
    """Did going from ``before`` to ``after`` apply ``revision``? (The revisions are numbered 0001, 0002…)"""
    return after is not None and after >= revision and (before is None or before < revision)
