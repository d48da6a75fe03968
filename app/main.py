"""create_app(): routers, error handlers, the PWA as static files."""

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlmodel import select

from app import __version__
from app.auth.models import User
from app.auth.router import router as auth_router
from app.config import Settings, check_production_safety, get_settings
from app.db import Database, utcnow
from app.errors import install_error_handlers
from app.hazards.router import router as hazards_router
from app.org.router import router as org_router
from app.places.router import router as places_router
from app.referrals.calendar import years_without_schedule
from app.referrals.models import WorkdayOverride
from app.referrals.policy import DEFAULT_POLICY_PATH, load_policy
from app.referrals.router import router as referrals_router
from app.referrals.sweeper import periodic_sweep
from app.photos.router import router as photos_router
from app.photos.storage import FilesystemBlobStore
from app.sync.pull_router import router as sync_pull_router
from app.sync.router import devices_router
from app.sync.router import router as sync_router

PWA_DIR = Path(__file__).resolve().parent.parent / "pwa"
log = logging.getLogger("firegrid")


def create_app(settings: Settings | None = None, db: Database | None = None,
               clock: Callable[[], datetime] = utcnow) -> FastAPI:
    settings = settings or get_settings()
    db = db or Database.from_settings(settings)
    # Validated now, so a bad policy file stops start-up with its file, rule and field named.
    policy = load_policy(settings.policy_file or DEFAULT_POLICY_PATH)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        with db.session() as session:
            demo = session.exec(select(User.id).where(User.is_demo)).first() is not None
            missing = years_without_schedule(session.exec(select(WorkdayOverride.day)).all(), clock().date())
        check_production_safety(settings, demo_accounts_present=demo)
        if missing:
            log.warning("no holiday schedule for %s: deadlines there count Monday-Friday only; add the year's "
                        "holidays and adjusted workdays with PUT /api/v1/calendar/overrides", missing)
        # temp files of uploads cut short by a crash (a disconnect removes its own)
        await asyncio.to_thread(app.state.blob_store.cleanup_tmp)
        checkpointer = db.start_checkpointer()
        task = None
        try:
            if settings.sweep_interval_seconds > 0:
                task = asyncio.create_task(periodic_sweep(db, policy, lambda: app.state.clock(),
                                                          settings.sweep_interval_seconds))
            yield
        finally:
            if task is not None:
                task.cancel()
            if checkpointer is not None:
                checkpointer.stop()

    app = FastAPI(title="Firegrid", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.db = db
    app.state.policy = policy
    app.state.clock = clock
    app.state.blob_store = FilesystemBlobStore(settings.storage_dir)
    install_error_handlers(app)

    @app.get("/healthz", tags=["ops"])
    def healthz():
        try:
            with db.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            log.exception("health check: database unreachable")
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return {"status": "ok", "database": db.engine.dialect.name, "version": __version__}

    # Requests are matched against routers in this order (~170 µs to reach the eighth router on the
    # benchmark machine), so the phones' busiest calls come first. No two routers' paths overlap.
    for router in (sync_router, sync_pull_router, photos_router, hazards_router, auth_router, org_router, places_router,
                   referrals_router, devices_router):
        app.include_router(router)

    # Last: the PWA owns every path the API does not.
    app.mount("/", StaticFiles(directory=PWA_DIR, html=True), name="pwa")
    return app
