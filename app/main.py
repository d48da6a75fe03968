"""create_app(): routers, error handlers, the PWA as static files."""

import logging
from contextlib import asynccontextmanager
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
from app.db import Database
from app.errors import install_error_handlers
from app.org.router import router as org_router
from app.places.router import router as places_router

PWA_DIR = Path(__file__).resolve().parent.parent / "pwa"
log = logging.getLogger("firegrid")


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or get_settings()
    db = db or Database.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        with db.session() as session:
            demo = session.exec(select(User.id).where(User.is_demo)).first() is not None
        check_production_safety(settings, demo_accounts_present=demo)
        yield

    app = FastAPI(title="Firegrid", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.db = db
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

    for router in (auth_router, org_router, places_router):
        app.include_router(router)

    # Last: the PWA owns every path the API does not.
    app.mount("/", StaticFiles(directory=PWA_DIR, html=True), name="pwa")
    return app
