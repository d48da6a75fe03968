"""create_app(): routers, error handlers, the PWA as static files."""

import asyncio
import functools
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sqlmodel import select
from starlette.datastructures import Headers
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.audit import service as audit
from app.auth import service as auth_service
from app.auth.models import User
from app.auth.router import router as auth_router
from app.config import Settings, check_production_safety, get_settings
from app.db import Database, utcnow
from app.errors import HEAD_AS_GET, BodyTooLarge, error_body, install_error_handlers, route_methods
from app.hazards.router import router as hazards_router
from app.org.router import router as org_router
from app.places.router import router as places_router
from app.referrals.calendar import LOCAL_TZ, years_without_schedule
from app.referrals.models import WorkdayOverride
from app.referrals.policy import DEFAULT_POLICY_PATH, load_policy
from app.referrals.router import router as referrals_router
from app.referrals.sweeper import periodic_sweep
from app.photos.router import router as photos_router
from app.photos.staging import Staging
from app.photos.storage import FilesystemBlobStore
from app.sync.feed import start_restored_copy
from app.sync.pull_router import router as sync_pull_router
from app.sync.router import devices_router
from app.sync.router import router as sync_router
from app.sync.schemas import PushRequest

PWA_DIR = Path(__file__).resolve().parent.parent / "pwa"
log = logging.getLogger("firegrid")


def create_app(settings: Settings | None = None, db: Database | None = None,
               clock: Callable[[], datetime] = utcnow) -> FastAPI:
    settings = settings or get_settings()
    db = db or Database.from_settings(settings)
    audit.use_settings(settings)  # the key this process seals audit events with
    # Validated now, so a bad policy file stops start-up with its file, rule and field named.
    policy = load_policy(settings.policy_file or DEFAULT_POLICY_PATH)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        with db.session() as session:
            demo = session.exec(select(User.id).where(User.is_demo)).first() is not None
            missing = years_without_schedule(session.exec(select(WorkdayOverride.day)).all(),
                                             clock().astimezone(LOCAL_TZ).date())  # as /calendar/status counts
        check_production_safety(settings, demo_accounts_present=demo)
        if missing:
            log.warning("no holiday schedule for %s: deadlines there count Monday-Friday less the statutory "
                        "holidays only; add the year's schedule (its bridging days and adjusted workdays, 调休) "
                        "with PUT /api/v1/calendar/overrides", missing)
        # a store and a database that cannot be written refuse the start, so the orchestrator sees it: else the
        # server showed healthy while every upload or every write failed
        await asyncio.to_thread(app.state.blob_store.check_writable)
        await asyncio.to_thread(db.check_writable)
        restored = await asyncio.to_thread(start_restored_copy, db)
        if restored is not None:
            log.warning("this database is a copy of a backup taken at %s, started now: the phones' cursors of "
                        "before are refused, and they send again what they sent since", restored.isoformat())
        # temp files of uploads cut short by a crash (a disconnect removes its own)
        await asyncio.to_thread(app.state.blob_store.cleanup_tmp)
        checkpointer = db.start_checkpointer()
        task = None
        try:
            if settings.sweep_interval_seconds > 0:
                task = asyncio.create_task(periodic_sweep(db, policy, lambda: app.state.clock(),
                                                          settings.sweep_interval_seconds,
                                                          chores=[functools.partial(forget_login_failures, db,
                                                                                    settings)]))
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
    app.state.blob_store = FilesystemBlobStore(settings.storage_dir,
                                               staging=Staging(direct=settings.storage_direct_io))
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
    routers = (sync_router, sync_pull_router, photos_router, hazards_router, auth_router, org_router, places_router,
               referrals_router, devices_router)
    for router in routers:
        app.include_router(router)
    # a 405's Allow header, and where HEAD is answered as GET (/healthz, the app's own route, too)
    app.state.api_routes = [*(route for route in app.router.routes if isinstance(route, APIRoute)),
                            *(route for router in routers for route in router.routes)]
    _document_bodies_read_by_hand(app, PushRequest)
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(NoNulInQuery)
    app.add_middleware(HeadAsGet)

    # Last: the PWA owns every path the API does not.
    app.router.routes.append(PwaMount("/", app=StaticFiles(directory=PWA_DIR, html=True), name="pwa"))
    return app


class PwaMount(Mount):
    """The PWA's static files, on every path but the API's. Mounted on all of them, they answered an /api/ path
    that no route takes (404 in plain text) and, since a full match beats a route's method mismatch, one that
    a route takes by another method (405 naming the static files' methods): both now the API's, in JSON."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "")
        if path == "/api" or path.startswith("/api/"):
            return Match.NONE, {}
        return super().matches(scope)


def forget_login_failures(db: Database, settings: Settings, now: datetime) -> None:
    with db.session(write=True) as session:
        auth_service.forget_old_failures(session, settings, now)
        session.commit()


_PUSH_PATH = sync_router.prefix + "/push"
_PULL_PATH = sync_pull_router.prefix + "/pull"
_BLOBS_PATH = photos_router.prefix + "/"


class BodyLimit:
    """Bounds every request body as it arrives: 413 (JSON, naming the limit) past it.

    FastAPI reads a declared JSON body whole, before any dependency runs: without a bound, one request
    (a stranger's too) could fill a worker's memory. A push has a bound of its own, larger; a photo
    upload none here, because it counts its bytes against max_photo_bytes as it streams them to disk.
    (FastAPI's own ``max_body_size`` answers in plain text, not in this API's error format.)"""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    def limit_for(self, scope: Scope) -> int | None:
        path, method = scope["path"], scope["method"]
        if method in ("GET", "HEAD", "OPTIONS"):  # no route reads a body here
            return None
        if path == _PUSH_PATH:
            return self.settings.max_push_bytes
        if method == "PUT" and path.startswith(_BLOBS_PATH):
            return None
        return self.settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit_for(scope) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:  # refused before a byte of it is read
            response = JSONResponse(BodyTooLarge(limit).body(), status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)  # from inside the endpoint's read: the error handlers answer it
            return message

        await self.app(scope, counted, send)


class HeadAsGet:
    """HEAD as GET, without the body, wherever an API route takes GET and none takes HEAD (the photos' routes
    do, so as not to read the file): HTTP requires HEAD wherever GET is (RFC 9110 §9.3.2), and FastAPI's routes
    take only the methods they name. Here rather than as a HEAD route beside each GET one: no route can be
    left out, and the OpenAPI document stays as it is (FastAPI would list each operation twice). The GET runs
    whole (auth, scope: the same 401 and 404), so its status and headers, Content-Length too, are HEAD's."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or not _answers_get_only(scope):
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET", HEAD_AS_GET: True}, receive, without_body)


def _answers_get_only(scope: Scope) -> bool:
    methods = route_methods(scope["app"], scope)
    return "GET" in methods and "HEAD" not in methods


class NoNulInQuery:
    """A NUL (``%00``) in an API call's query string: 422 naming the parameter, before any route runs.

    No parameter of this API (ids, codes, filters, cursors) can hold one. Left to the routes, a NUL met
    the database: PostgreSQL's driver refuses it in any text it sends, SQLite stores or compares it, and a
    value bound as a literal (the queue's status filter) broke the SQL itself on both: a 500 there."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and b"%00" in scope.get("query_string", b"") and scope["path"].startswith("/api/")
                and scope["path"] != _PULL_PATH):  # a cursor it did not issue: 410, the phone starts over (API.md)
            names = [k for k, v in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
                     if "\x00" in k or "\x00" in v]
            if names:
                fields = [{"field": f"query.{k.replace(chr(0), '')}", "message": _NUL_MESSAGE}
                          for k in dict.fromkeys(names)]
                summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
                response = JSONResponse(error_body("validation_error", summary, fields=fields), status_code=422)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_NUL_MESSAGE = "must not contain the NUL character (U+0000)"


def _document_bodies_read_by_hand(app: FastAPI, *models: type[BaseModel]) -> None:
    """Put these models into the OpenAPI document's components.

    A route that authenticates before it reads its body (the push) cannot declare the body as a
    parameter, because FastAPI reads and parses declared bodies before any dependency runs. It names
    the model in ``openapi_extra`` instead (``#/components/schemas/<Model>``), and this puts the model
    and the models inside it where that reference points."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            components = generate().setdefault("components", {}).setdefault("schemas", {})
            for model in models:  # what FastAPI generated under the same name stays as it is
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, definition in {**schema.pop("$defs", {}), model.__name__: schema}.items():
                    components.setdefault(name, definition)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
