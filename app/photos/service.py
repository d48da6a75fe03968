"""Photo use cases: which records use which photo, what is still on the phone, who may see a photo,
and ingesting an upload (stream to disk -> hash check -> structural check -> publish -> ``blobs`` row).

Refs (``photo_refs``) are written by the hazard services inside their own transaction
(``register_refs``). Uploads are different: a 15 MB photo over a weak link can take minutes,
so ``ingest`` never holds a transaction (on SQLite the write lock, on PostgreSQL a pooled
connection) while bytes arrive. It opens a short read transaction to check (``begin_upload``), and
a short write transaction to insert the row once the file is safely published.
"""

from __future__ import annotations

import functools
import os
import threading
import zlib
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from app.auth import service as auth_service
from app.auth.scope import Scope, hazard_clause
from app.db import Database, utcnow
from app.errors import DomainError, Invalid, NotFound
from app.hazards.models import Hazard
from app.photos.imaging import DISPLAY_SIDE, THUMB_SIDE, ImageInfo, ImageRejected, inspect_image, make_derivative
from app.photos.models import Blob, PhotoRef, RecordKind
from app.photos.schemas import BlobPublic
from app.photos.storage import BlobStore, HashMismatch, InvalidName, PutResult, TooLarge, validate_sha256

# Derivatives served by GET /blobs/{sha}/{kind}: made on first request, then cached on disk.
DERIVATIVES: dict[str, int] = {"thumb": THUMB_SIDE, "display": DISPLAY_SIDE}
# Raised whenever what a derivative may hold changes, so that copies made before are neither served from the
# disk cache nor kept by a phone revalidating its ETag. 2: the original's JPEG comment (COM) no longer carried.
DERIVATIVE_VERSION = 2


def derivative_name(kind: str) -> str:
    """The kind as cached on disk and named in the ETag: with the version that made it."""
    return f"{kind}-v{DERIVATIVE_VERSION}"


# Decoding a photo is CPU work that needs up to 4 bytes per pixel (a 12 MP photo: ~50 MB; the
# 60 MP ceiling: ~240 MB). Decodes beyond the CPUs only add memory, not speed: cap how many one
# worker process runs at once (with the usual 2 workers, half the CPUs each). Uploads waiting for
# a slot hold only their temp file on disk.
DECODE_SLOTS = max(1, len(os.sched_getaffinity(0)) // 2) if hasattr(os, "sched_getaffinity") else 2
_decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)


def _validate(path: Path) -> ImageInfo:
    """The upload's validate hook: full decode (truncation shows only there), a bounded number at a time."""
    with _decode_slots:
        return inspect_image(path)


class PhotoTooLarge(DomainError):
    status = 413
    code = "too_large"


# -- names ---------------------------------------------------------------------------------


def valid_name(sha256: str, field: str = "sha256") -> str:
    try:
        return validate_sha256(sha256)
    except InvalidName as exc:
        raise Invalid(f"{field}: {exc}", code="invalid_sha256", field=field) from exc


_CHUNK = 900  # IN-list entries per statement (well under SQLite's bound-parameter limit)
_STORED = sa.select(Blob.sha256).where(Blob.sha256.in_(sa.bindparam("shas", expanding=True)))  # built once


def _dedupe(shas: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(shas))


# -- refs: which records use which photo ---------------------------------------------------


@functools.cache
def _insert_ignoring_conflicts(dialect: str, table: sa.Table, returning: str | None = None) -> sa.Insert:
    """INSERT … ON CONFLICT DO NOTHING on either backend, built once per (dialect, table): a statement
    built per call cost more than running it. RETURNING, where wanted, because psycopg reports a
    rowcount of -1 for it."""
    stmt = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect](table).on_conflict_do_nothing()
    return stmt.returning(table.c[returning]) if returning else stmt


def _insert_refs(session: Session, rows: list[dict]) -> None:
    """A re-sent op or a concurrent registration of the same ref adds nothing. One executemany: a
    multi-VALUES statement was compiled afresh for every push (a quarter of a one-op push's writes)."""
    if rows:
        session.execute(_insert_ignoring_conflicts(session.get_bind().dialect.name, PhotoRef.__table__), rows)


def register_refs(session: Session, hazard_id: str, record_kind: str | RecordKind, record_id: str,
                  shas: Sequence[str]) -> list[str]:
    """Record that ``record_kind``/``record_id`` (of hazard ``hazard_id``) uses these photos.

    Idempotent (a re-sent op or a replayed batch adds nothing) and safe against a concurrent
    registration of the same ref. Returns the photos not yet stored: still on the phone.
    Runs inside the caller's transaction; never commits.
    """
    return register_refs_bulk(session, [(hazard_id, record_kind, record_id, shas)])


def register_refs_bulk(session: Session, refs: Iterable[tuple[str, str | RecordKind, str, Sequence[str]]]) -> list[str]:
    """``register_refs`` for a whole sync batch: (hazard_id, record_kind, record_id, shas) tuples, one
    multi-row INSERT … ON CONFLICT DO NOTHING and one query for what is missing."""
    now = utcnow()
    rows: list[dict] = []
    for hazard_id, record_kind, record_id, shas in refs:
        kind = RecordKind(record_kind).value
        for s in _dedupe(valid_name(x, "photos") for x in shas):
            rows.append({"sha256": s, "hazard_id": hazard_id, "record_kind": kind, "record_id": record_id,
                         "created_at": now})
    _insert_refs(session, rows)
    return missing(session, [r["sha256"] for r in rows])


def missing(session: Session, shas: Sequence[str], store: BlobStore | None = None) -> list[str]:
    """The names among ``shas`` that are not stored (input order, no duplicates).

    The ``blobs`` row is the truth; given the store, a row whose file is gone from disk counts
    as missing too, so the phone sends it again and the upload heals it.
    """
    shas = _dedupe(shas)
    if not shas:
        return []
    stored: set[str] = set()
    for i in range(0, len(shas), _CHUNK):
        stored.update(session.execute(_STORED, {"shas": shas[i:i + _CHUNK]}).scalars())
    if store is not None:
        stored = {s for s in stored if store.has(s)}
    return [s for s in shas if s not in stored]


def pending_for_hazard(session: Session, hazard_id: str) -> list[str]:
    """Photos the hazard's records use that have not arrived yet (the office sees them as 'on the phone')."""
    return pending_for_hazards(session, [hazard_id]).get(hazard_id, [])


def pending_for_hazards(session: Session, hazard_ids: Sequence[str]) -> dict[str, list[str]]:
    """``pending_for_hazard`` for a page of hazards in one query; hazards with nothing pending are absent."""
    if not hazard_ids:
        return {}
    rows = session.exec(
        select(PhotoRef.hazard_id, PhotoRef.sha256)
        .outerjoin(Blob, Blob.sha256 == PhotoRef.sha256)
        .where(PhotoRef.hazard_id.in_(list(hazard_ids)), Blob.sha256.is_(None))
        .order_by(PhotoRef.id)
    ).all()
    out: dict[str, list[str]] = {}
    for hazard_id, sha in rows:
        lst = out.setdefault(hazard_id, [])
        if sha not in lst:
            lst.append(sha)
    return out


def hazards_using(session: Session, sha256: str) -> list[str]:
    """Ids of the hazards whose records use this photo."""
    return list(session.exec(select(PhotoRef.hazard_id).where(PhotoRef.sha256 == sha256).distinct()).all())


def can_view(session: Session, scope: Scope, sha256: str) -> bool:
    """True if the scope sees a hazard that uses the photo, or the caller uploaded it and no record uses it
    yet. Once a record uses it, its records' jurisdiction decides, for the uploader too: a hazard moved
    or handed out of their grid takes its photos with it."""
    used = session.exec(
        select(PhotoRef.id).join(Hazard, Hazard.id == PhotoRef.hazard_id)
        .where(PhotoRef.sha256 == sha256, hazard_clause(scope)).limit(1)
    ).first()
    if used is not None:
        return True
    unused = ~sa.exists().where(PhotoRef.sha256 == Blob.sha256)
    return session.exec(
        select(Blob.sha256).where(Blob.sha256 == sha256, Blob.uploaded_by_user_id == scope.user_id, unused)
    ).first() is not None


# -- ingest --------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    blob: BlobPublic
    created: bool  # True -> 201, False -> 200


_BLOBS = Blob.__table__
_PUBLIC_COLUMNS = [c for c in _BLOBS.c if c.key in BlobPublic.model_fields]


def public(row: Mapping[str, Any], created: bool) -> BlobPublic:
    """The API's view of a ``blobs`` row (a result mapping, or the values just inserted)."""
    return BlobPublic(created=created, **{c.key: row[c.key] for c in _PUBLIC_COLUMNS})


@dataclass(frozen=True)
class Uploader:
    user_id: str
    device_id: str


# Built once: constructing a statement per upload cost more than running it. Core, not the ORM: an
# upload needs a row's values, not an object (the ORM load was half of the pre-check's CPU).
_SELECT_BLOB = sa.select(*_PUBLIC_COLUMNS).where(_BLOBS.c.sha256 == sa.bindparam("sha256"))
# The token check and whether the photo is stored, in one statement: a new photo (the usual case)
# needs no other before its body (bench/instructions.py); a stored one's row is read after it.
_UPLOAD_CHECK = auth_service.token_ids_query(
    sa.exists().where(_BLOBS.c.sha256 == sa.bindparam("sha256")).label("stored"))
_SELECT_STORED = sa.select(*_PUBLIC_COLUMNS, _BLOBS.c.uploaded_by_user_id).where(
    _BLOBS.c.sha256 == sa.bindparam("sha256"))
# Where and when the photo was taken: answered to a re-upload only by its own uploader. The answer to a
# stored photo comes before the body is read, so all the caller has shown is that they know the name.
_EVIDENCE = {"exif_datetime": None, "gps_lat": None, "gps_lon": None}


def begin_upload(db: Database, store: BlobStore, sha256: str, token_hash: str) -> tuple[Uploader, BlobPublic | None]:
    """Before any byte of the body, in one short read transaction: who is uploading (401 first,
    whatever the name), and the photo as the API shows it if it is already stored (row and file;
    its EXIF evidence only to its uploader), so the body need not be read at all. ``token_hash``:
    auth_service.token_digest of the bearer token."""
    try:
        name = validate_sha256(sha256)
    except InvalidName:
        name = None
    with db.connect() as conn:
        row = conn.execute(_UPLOAD_CHECK, {"token_hash": token_hash, "sha256": name or ""}).first()
        who = Uploader(*auth_service.ids_of_token_row(row))
        valid_name(sha256)  # a bad name is a 422, said only to a caller with a valid token
        stored = conn.execute(_SELECT_STORED, {"sha256": name}).mappings().first() if row.stored else None
    if stored is None or not store.has(sha256):
        return who, None
    answer = public(stored, False)
    if stored["uploaded_by_user_id"] != who.user_id:
        answer = answer.model_copy(update=_EVIDENCE)
    return who, answer


def _record_blob(db: Database, put: PutResult[ImageInfo], uploader: Uploader, now: datetime) -> IngestResult:
    """The ``blobs`` row of a published photo, in its own short write transaction."""
    info = put.info
    assert info is not None  # the validate hook always returns one
    values = {
        "sha256": put.sha256, "size": put.size, "mime": info.mime, "width": info.width, "height": info.height,
        "exif_datetime": info.exif_datetime[:32] if info.exif_datetime else None,
        "gps_lat": info.gps_lat, "gps_lon": info.gps_lon, "orientation": info.orientation,
        "created_at": now, "uploaded_by_user_id": uploader.user_id, "uploaded_by_device_id": uploader.device_id,
    }
    with db.connect(write=True) as conn:
        insert = _insert_ignoring_conflicts(conn.dialect.name, _BLOBS, "sha256")
        inserted = conn.execute(insert, values).first() is not None
        row = values if inserted else conn.execute(_SELECT_BLOB, {"sha256": put.sha256}).mappings().one()
    # created: this request made the photo available (a file left on disk by a crash between
    # publishing and the insert counts as not yet stored: the row is what the API goes by)
    return IngestResult(public(row, inserted), created=inserted)


async def ingest(db: Database, store: BlobStore, sha256: str, chunks: AsyncIterable[bytes] | Iterable[bytes], *,
                 max_bytes: int, uploader: Uploader, now: datetime | None = None) -> IngestResult:
    """Store one uploaded photo under its name (after ``begin_upload`` found it absent).

    The body is streamed to a temp file while hashed (chunk by chunk as it arrives), then checked
    against the name, given a structural check, published and recorded, those four in one worker
    thread hop. Raises DomainError: 422 ``invalid_sha256`` / ``hash_mismatch``
    / ``corrupt_image`` / ``truncated_image`` / ``decompression_bomb``, 415
    ``unsupported_media_type``, 413 ``too_large``. A failure or a client gone mid-way leaves
    nothing visible; the retry starts afresh.
    """
    sha256 = valid_name(sha256)
    at = now or utcnow()
    recorded: list[IngestResult] = []

    def record(put: PutResult[ImageInfo]) -> None:
        recorded.append(_record_blob(db, put, uploader, at))

    try:
        put = await store.put_stream_async(sha256, chunks, max_bytes, validate=_validate, on_stored=record)
    except HashMismatch as exc:
        raise Invalid(f"the body hashes to {exc.actual}, not to its name {exc.expected}", code="hash_mismatch",
                      expected=exc.expected, actual=exc.actual) from exc
    except TooLarge as exc:
        raise PhotoTooLarge(f"a photo may be at most {exc.max_bytes} bytes", max_bytes=exc.max_bytes) from exc
    except ImageRejected as exc:
        raise DomainError(exc.message, code=exc.code, status=exc.status) from exc
    if not recorded:  # a store that publishes without calling on_stored: the row all the same
        await run_in_threadpool(record, put)
    return recorded[0]


# -- derivatives ---------------------------------------------------------------------------

_LOCKS = [threading.Lock() for _ in range(64)]  # striped: one thumbnail made once per process


def derivative_file(store: BlobStore, sha256: str, kind: str) -> Path:
    """Path of the cached derivative, made now if absent. Blocking CPU work: call from a worker thread.

    Derivatives are JPEGs with the EXIF orientation applied and no metadata at all (no GPS),
    made lazily so ingest pays only for what every photo needs (hash, write, full decode).
    """
    side = DERIVATIVES.get(kind)
    if side is None:
        raise NotFound(f"no derivative {kind!r}")
    cached = derivative_name(kind)
    path = store.derivative_path(sha256, cached)
    if path is not None:
        return path
    with _LOCKS[zlib.crc32(f"{sha256}/{kind}".encode()) % len(_LOCKS)]:
        path = store.derivative_path(sha256, cached)
        if path is not None:
            return path
        src = store.path(sha256)
        if src is None:
            raise NotFound(f"photo {sha256} has not arrived yet", code="photo_pending")
        try:
            data = make_derivative(src, side)
        except ImageRejected as exc:  # uploads get a structural check; damage inside the data shows here
            raise DomainError(exc.message, code=exc.code, status=exc.status) from exc
        store.put_derivative(sha256, cached, data)
        path = store.derivative_path(sha256, cached)
    if path is None:  # pragma: no cover - a remote store without local paths
        raise NotFound(f"derivative {kind} of {sha256} not available")
    return path
