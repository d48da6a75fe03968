"""Typed domain errors and the single place that turns every error into JSON.

Every error response has the shape {"error": {"code", "message", ...}}; no stack trace leaks.
"""

import logging
import re
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

log = logging.getLogger("firegrid")


class DomainError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None, **extra: Any):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.extra = extra


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class Invalid(DomainError):
    status = 422
    code = "invalid"


class TooManyRequests(DomainError):
    status = 429
    code = "rate_limited"


class PreconditionFailed(DomainError):
    """412 (RFC 9110 §13.1.1): a write's If-Match names a version the record is no longer at: someone changed
    it after the caller read it. Raised before anything is written (the headers: app/conditional.py)."""

    status = 412
    code = "precondition_failed"


class BodyTooLarge(StarletteHTTPException):
    """A request body past its limit (app.main.BodyLimit). An HTTP exception, not a DomainError: it is
    raised from inside a body read, and FastAPI turns anything else raised there into a 400."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"the request body is larger than this call's limit of {max_bytes} bytes")
        self.max_bytes = max_bytes

    def body(self) -> dict:
        return error_body("too_large", self.detail, max_bytes=self.max_bytes)


def error_body(code: str, message: str, **extra: Any) -> dict:
    return {"error": {"code": code, "message": message, **extra}}


def _field_name(loc: tuple) -> str:
    # ("body", "data", "lat") -> "data.lat"; the "body"/"query" prefix says where, keep it for params only
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def _field_error(e: dict) -> dict[str, str]:
    if e.get("type") == "json_invalid":
        # FastAPI's loc is ("body", <the character offset where its parser gave up>), its msg "JSON decode error":
        # the body named, with the parser's reason and where
        loc = tuple(e.get("loc", ()))
        at = f" at character {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
        reason = str((e.get("ctx") or {}).get("error", "")).strip() or e.get("msg", "invalid")
        return {"field": "body", "message": f"not valid JSON ({reason}{at})"}
    return {"field": _field_name(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid")}


# The database turned the request away for now: it waited its time for a lock (SQLite's busy_timeout,
# PostgreSQL's lock_timeout, both 10 s: app/db.py), was chosen to break a deadlock, or had its shared
# lock table full (pushes at once hold many advisory locks: docs/DEPLOY.md). The transaction was
# rolled back whole, so the client may simply send the same request again.
_PG_BUSY = {"55P03": "a lock wait timed out", "40P01": "a deadlock was broken", "40001": "a serialization conflict",
            "53200": "the database ran short of memory, its lock table most likely"}
_SQLITE_BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (and their extended codes, in the low byte)
RETRY_AFTER_SECONDS = 1


def busy_reason(exc: BaseException) -> str | None:
    """Why the database refused the request for now, or None if this is not such an error."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    orig = exc.orig
    reason = _PG_BUSY.get(getattr(orig, "sqlstate", None) or "")
    if reason:
        return reason
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _SQLITE_BUSY:
        return "the database was locked by another writer"
    return None


def reject_nul(value: Any) -> Any:
    """A validator for text fields (pydantic): PostgreSQL can neither store nor compare a NUL, and SQLite
    would store it; refused where it arrives, as a 422 that names the field, on both backends alike."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000)")
    return value


def reject_unencodable(value: Any) -> Any:
    """A validator for text pydantic passes unchecked (a plain ``str``, no constraint): a lone UTF-16
    surrogate (JSON's "\\ud800") decodes to a character that no encoder takes: hashing a password with one
    was a 500. Refused as it arrives, naming the field."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must not contain a lone UTF-16 surrogate (half of a character)") from None
    return value


_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def reject_number_as_time(value: Any) -> Any:
    """A BeforeValidator for times: ISO-8601 text only (API.md). pydantic's lax parsing takes a number, or text
    that is one, as Unix seconds, or milliseconds if it is large: a phone's unset time (0) became 1970-01-01,
    and a figures period "to=0.5" a year before that."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("must be an ISO-8601 time with its offset, e.g. 2026-03-02T09:00:00+08:00, not a number")
    return value


def reject_number_as_date(value: Any) -> Any:
    """As reject_number_as_time, for a day: pydantic's lax ``date`` takes 0 as 1970-01-01."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("must be an ISO-8601 date, e.g. 2026-10-01, not a number")
    return value


def reject_bool_as_number(value: Any) -> Any:
    """A BeforeValidator for numbers: pydantic's lax ``float`` takes true as 1.0 (a premises filed at
    latitude 1, longitude 0). Text that is a number still passes: a sheet's cells are text."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


def bindable(value: Any) -> bool:
    """Text the database can take as a parameter: no NUL (PostgreSQL refuses it, SQLite compares it) and no
    lone surrogate (JSON's \\ud800 decodes to one, which neither driver can encode: a 500). For what comes
    back from a client inside an opaque token (a cursor), where no pydantic field validates it."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def nul_in_text(exc: BaseException) -> bool:
    """PostgreSQL's driver refuses a NUL in any text it sends, a value or a lookup alike (SQLite stores it):
    the client's input, not the server's fault."""
    return isinstance(exc, sa.exc.DataError) and "NUL (0x00)" in str(exc.orig)


# what FastAPI answers when a declared JSON body cannot be read at all, the reason only in __cause__
_FASTAPI_BODY_ERROR = "There was an error parsing the body"


def body_problem(cause: BaseException | None) -> str:
    """What is wrong with a request body FastAPI could not read, in words the sender can act on."""
    if isinstance(cause, UnicodeDecodeError):
        return "the request body is not UTF-8 text: send JSON encoded as UTF-8"
    if isinstance(cause, RecursionError):
        return "the request body's JSON is nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "the request body holds an integer too long to read (over 4300 digits)"
    return "the request body could not be read as JSON"


# set in the scope of a HEAD answered as a GET (app.main.HeadAsGet): a route with a side effect of being read
# (a pull records the phone's sync) leaves it out for a HEAD, which brings the phone nothing
HEAD_AS_GET = "firegrid.head_as_get"


def route_methods(app: FastAPI, scope: dict) -> set[str]:
    """Every method some API route (``app.state.api_routes``) takes at this scope's path, as the routes
    name them."""
    methods: set[str] = set()
    for route in getattr(app.state, "api_routes", ()):
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return methods


def _methods_for(request: Request) -> list[str]:
    """Every method some route takes at this path: Starlette's 405 names only the first route that matched
    the path (GET of ``/places``, not the POST of another route on the same path)."""
    methods = route_methods(request.app, request.scope)
    if "GET" in methods:
        methods.add("HEAD")  # answered wherever GET is (app.main.HeadAsGet), though no route names it
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError):
        headers = exc.extra.pop("headers", None) if "headers" in exc.extra else None
        return JSONResponse(error_body(exc.code, exc.message, **exc.extra), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        fields = [_field_error(e) for e in exc.errors()]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        return JSONResponse(error_body("validation_error", summary or "invalid request", fields=fields), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:
            return JSONResponse(error_body("bad_body", body_problem(exc.__cause__)), status_code=400)
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        body = exc.body() if isinstance(exc, BodyTooLarge) else error_body(code, str(exc.detail))
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            allowed = _methods_for(request) or [m.strip() for m in (headers or {}).get("Allow", "").split(",") if m.strip()]
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
            body = error_body(code, f"{request.method} is not allowed here; allowed: {', '.join(allowed)}")
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(sa.exc.DBAPIError)
    async def database_error(request: Request, exc: sa.exc.DBAPIError):
        if nul_in_text(exc):  # the fields phones and forms send are checked first and named; this is the net
            return JSONResponse(error_body("validation_error", "a text value contains the NUL character (U+0000), "
                                                               "which cannot be stored: remove it"), status_code=422)
        reason = busy_reason(exc)
        if reason is None:
            return await unexpected(request, exc)
        log.warning("database busy: %s (%s %s)", reason, request.method, request.url.path)
        return JSONResponse(error_body("busy", f"the server is busy ({reason}); nothing was changed: send the same "
                                               "request again", retry_after_seconds=RETRY_AFTER_SECONDS),
                            status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception):
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
