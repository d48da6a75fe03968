"""/api/v1/blobs: content-addressed photo upload and download (HTTP only; the work is in service.py).

None of these routes uses ``SessionDep``: an upload or a download of a 15 MB photo over a weak
link can last minutes, and a session held that long is the SQLite write lock (the dependency
opens write transactions for PUT/POST) or a pooled PostgreSQL connection. Each route opens a
short session for the permission check and lets it go before the bytes flow.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from app.auth import service as auth_service
from app.auth.deps import bearer, require_bearer
from app.auth.models import User
from app.auth.scope import scope_for
from app.conditional import not_modified
from app.errors import NotFound, error_body
from app.org.models import OrgUnit
from app.photos import service
from app.photos.imaging import ACCEPTED_MIME
from app.photos.models import Blob
from app.photos.schemas import BlobPublic, MissingAnswer, MissingQuery
from app.photos.storage import FilesystemBlobStore, InvalidName, validate_sha256

router = APIRouter(prefix="/api/v1/blobs", tags=["photos"])

CACHE_CONTROL = "private, max-age=31536000, immutable"
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


# -- dependencies ----------------------------------------------------------------------------


async def get_store(request: Request) -> FilesystemBlobStore:
    # async: FastAPI runs a plain-def dependency in a worker thread, a thread hop per upload for a lookup
    return request.app.state.blob_store


StoreDep = Annotated[FilesystemBlobStore, Depends(get_store)]


def _authenticate(request: Request, session, creds: HTTPAuthorizationCredentials | None) -> tuple[User, OrgUnit]:
    user, _, _, unit = auth_service.authenticate(session, request.app.state.settings, require_bearer(creds))
    return user, unit


def viewable_blob(sha256: str, request: Request, creds: BearerDep) -> Blob:
    """The photo's row, for a caller who may see a record that uses it by a ref that counts (else 404: pending
    if a record they see names it, not found as for any unseen thing otherwise)."""
    with request.app.state.db.session() as session:
        user, unit = _authenticate(request, session, creds)
        try:
            validate_sha256(sha256)
        except InvalidName:
            raise NotFound(f"photo {sha256[:80]} not found") from None
        scope = scope_for(session, user, unit)
        if not service.can_view(session, scope, sha256):
            if service.named_in_scope(session, scope, sha256):  # named by a record, not (yet) proven: pending
                raise NotFound(f"photo {sha256} has not arrived from the phone yet", code="photo_pending")
            raise NotFound(f"photo {sha256} not found")
        blob = session.get(Blob, sha256)
    if blob is None:
        raise NotFound(f"photo {sha256} has not arrived from the phone yet", code="photo_pending")
    return blob


ViewableBlob = Annotated[Blob, Depends(viewable_blob)]


# -- routes ----------------------------------------------------------------------------------


@router.post("/missing", response_model=MissingAnswer)
def post_missing(body: MissingQuery, request: Request, creds: BearerDep, store: StoreDep) -> MissingAnswer:
    """Which of these photos the server does not have yet (the phone then PUTs those). At most 500 names.
    A stored photo the caller neither holds nor may see is missing for them: they prove they have it by
    sending it."""
    seen: set[str] = set()
    db = request.app.state.db
    with db.session() as session:  # a short read session: no write lock for a question
        user, device, _, unit = auth_service.authenticate(session, request.app.state.settings, require_bearer(creds))
        for i, sha in enumerate(body.sha256):
            service.valid_name(sha, field=f"sha256.{i}")
        missing = service.missing(session, body.sha256, store=store, scope=scope_for(session, user, unit),
                                  seen_out=seen)
    if seen:  # stored photos they may see but had not proven they hold: seeing is as good (a rare write)
        service.hold_seen(db, user.id, seen)
    if missing:  # files in the store without their row (a restored backup): theirs again, if their records name them
        adopted = service.adopt_stored(db, store, service.Uploader(user.id, device.id), missing)
        missing = [s for s in missing if s not in adopted]
    return MissingAnswer(missing=missing)


_IMAGE_BODY = {"required": True, "content": {m: {"schema": {"type": "string", "format": "binary"}}
                                             for m in sorted(ACCEPTED_MIME)}}


@router.put(
    "/{sha256}", status_code=201, response_model=BlobPublic,
    # no dependencies (FastAPI solves them per request, a tenth of a photo's CPU here): the token and the store
    # are read below, and the scheme is documented as the dependency would have
    openapi_extra={"requestBody": _IMAGE_BODY, "security": [{"HTTPBearer": []}]},
    responses={200: {"model": BlobPublic, "description": "already stored"},
               413: {"description": "too large (`too_large`)"},
               415: {"description": "not an image of an accepted type (`unsupported_media_type`)"},
               422: {"description": "`invalid_sha256`, `hash_mismatch`, `truncated_image`, `corrupt_image`, "
                                    "`decompression_bomb`"}},
)
async def put_blob(sha256: str, request: Request) -> Response:
    """Upload one photo, named by the sha256 of its bytes; the raw image is the body.

    Already stored, and the caller holds it or may see it: 200 at once, without reading the body (with
    `Expect: 100-continue` the phone does not even send it). Otherwise the body is streamed to disk,
    checked and decoded off the event loop: 201 once it is durably stored, or 200 if it was stored
    already (the caller, having sent bytes that hash to the name, now holds it; the file stays as it was).
    """
    creds = await bearer(request)
    store: FilesystemBlobStore = request.app.state.blob_store
    max_bytes = request.app.state.settings.max_photo_bytes
    db = request.app.state.db
    # who is uploading and whether the photo is already here, in one short session before the body
    # Starlette's pool, not asyncio's: the uploads' finishing hops (a decode slot, the write lock) wait in
    # asyncio's few threads, and a re-sent photo's 200 or a 401 must not queue behind them
    token_hash = auth_service.token_digest(require_bearer(creds), request.app.state.settings.secret_key)
    who, stored = await run_in_threadpool(service.begin_upload, db, store, sha256, token_hash)
    if stored is not None:
        headers = None
        if "100-continue" in request.headers.get("expect", "").lower():
            headers = {"Connection": "close"}  # the body was never asked for: do not reuse the connection
        return JSONResponse(stored.model_dump(mode="json"), status_code=200, headers=headers)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise service.PhotoTooLarge(f"a photo may be at most {max_bytes} bytes", max_bytes=max_bytes)
    try:
        res = await service.ingest(db, store, sha256, request.stream(), max_bytes=max_bytes, uploader=who,
                                   now=request.app.state.clock())
    except ClientDisconnect:  # the phone went away mid-upload: nothing was kept, nobody reads this
        return JSONResponse(error_body("client_disconnected", "upload interrupted"), status_code=400)
    return JSONResponse(res.blob.model_dump(mode="json"), status_code=201 if res.created else 200)


def _cache_headers(etag: str) -> dict[str, str]:
    return {"ETag": etag, "Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}


def _not_modified(request: Request, etag: str) -> bool:
    return not_modified(request.headers.getlist("if-none-match") or None, etag)


# HEAD as GET (HTTP requires it wherever GET is; a cache or a phone checks a photo without fetching it):
# the same checks, FileResponse sends no body. Left out of the schema, as FastAPI would document it twice.
@router.head("/{sha256}", include_in_schema=False)
@router.get("/{sha256}", response_class=FileResponse,
            responses={200: {"content": {m: {} for m in sorted(ACCEPTED_MIME)}}, 304: {"description": "not modified"}})
def get_blob(request: Request, blob: ViewableBlob, store: StoreDep) -> Response:
    """The original as uploaded (with its EXIF: evidence), for those who may see a record that uses it."""
    etag = f'"{blob.sha256}"'
    if _not_modified(request, etag):
        return Response(status_code=304, headers=_cache_headers(etag))
    path = store.path(blob.sha256)
    if path is None:
        raise NotFound(f"photo {blob.sha256} has not arrived from the phone yet", code="photo_pending")
    return FileResponse(path, media_type=blob.mime, headers=_cache_headers(etag))


def _derivative(request: Request, blob: Blob, store: FilesystemBlobStore, kind: str) -> Response:
    etag = f'"{blob.sha256}-{service.derivative_name(kind)}"'
    if _not_modified(request, etag):
        return Response(status_code=304, headers=_cache_headers(etag))
    path = service.derivative_file(store, blob.sha256, kind)  # plain def route: runs in a worker thread
    return FileResponse(path, media_type="image/jpeg", headers=_cache_headers(etag))


_JPEG = {200: {"content": {"image/jpeg": {}}}, 304: {"description": "not modified"}}


@router.head("/{sha256}/thumb", include_in_schema=False)
@router.get("/{sha256}/thumb", response_class=FileResponse, responses=_JPEG)
def get_thumb(request: Request, blob: ViewableBlob, store: StoreDep) -> Response:
    """A JPEG of at most 320 px, orientation applied, no metadata (made on first request, then cached)."""
    return _derivative(request, blob, store, "thumb")


@router.head("/{sha256}/display", include_in_schema=False)
@router.get("/{sha256}/display", response_class=FileResponse, responses=_JPEG)
def get_display(request: Request, blob: ViewableBlob, store: StoreDep) -> Response:
    """A JPEG of at most 1600 px, orientation applied, no metadata (made on first request, then cached)."""
    return _derivative(request, blob, store, "display")
