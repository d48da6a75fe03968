"""Photo use cases: which records use which photo, what is still on the phone, who may see a photo,
and ingesting an upload (stream to disk -> hash check -> structural check -> publish -> ``blobs`` row).

Refs (``photo_refs``) are written by the hazard services inside their own transaction
(``register_refs``). Uploads are different: a 15 MB photo over a weak link can take minutes,
so ``ingest`` never holds a transaction (on SQLite the write lock, on PostgreSQL a pooled
connection) while bytes arrive. It opens a short read transaction to check (``begin_upload``), and
a short write transaction to insert the row once the file is safely published.

Proof of possession (see models.py): a ref counts only if whoever attached it holds the photo, so
knowing a photo's name lets no one see it, nor make it visible to their office by naming it in a record
of their own. A user holds a photo once they uploaded a body that hashed to its name, or attached it to a
record while they could already see it. A ref that does not count is, for everyone, a photo still on the
phone: the phone that named it is told it is missing and must send the bytes.
"""

from __future__ import annotations

import functools
import logging
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
from app.auth.models import User
from app.auth.scope import Scope, hazard_clause, scope_for
from app.db import Database, utcnow
from app.errors import DomainError, Invalid, NotFound
from app.hazards.models import Hazard
from app.photos.imaging import DISPLAY_SIDE, THUMB_SIDE, ImageInfo, ImageRejected, inspect_image, make_derivative
from app.photos.models import Blob, BlobHolder, PhotoRef, RecordKind
from app.photos.schemas import BlobPublic
from app.photos.storage import BlobStore, HashMismatch, InvalidName, PutResult, TooLarge, sha256_file, validate_sha256
from app.sync.feed import RESEND_MARGIN, restore_windows

log = logging.getLogger("firegrid")

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
# Built once. Which of these photos are stored, and (_STORED_HELD) whether the user holds each: one query,
# the one a registration or a missing query ran before proof of possession.
_STORED = sa.select(Blob.sha256).where(Blob.sha256.in_(sa.bindparam("shas", expanding=True)))
# the first uploader holds the photo by the blobs row itself; others by a blob_holders row
_HOLDS = (Blob.uploaded_by_user_id == sa.bindparam("user_id")) | sa.exists().where(
    BlobHolder.sha256 == Blob.sha256, BlobHolder.user_id == sa.bindparam("user_id"))
_STORED_HELD = sa.select(Blob.sha256, _HOLDS.label("held")).where(Blob.sha256.in_(sa.bindparam("shas", expanding=True)))
# A ref counts if whoever attached it holds the photo; refs from before the rule (NULL) count.
_UPLOADED = Blob.__table__.alias("uploaded")  # its own name: a query around COUNTS may join blobs itself
COUNTS = PhotoRef.added_by_user_id.is_(None) | sa.exists().where(
    _UPLOADED.c.sha256 == PhotoRef.sha256, _UPLOADED.c.uploaded_by_user_id == PhotoRef.added_by_user_id) | sa.exists(
).where(BlobHolder.sha256 == PhotoRef.sha256, BlobHolder.user_id == PhotoRef.added_by_user_id)


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
                  shas: Sequence[str], *, added_by: str | None = None, scope: Scope | None = None) -> list[str]:
    """Record that ``record_kind``/``record_id`` (of hazard ``hazard_id``) uses these photos, attached by
    the user ``added_by`` (``scope``: theirs, if the caller has it at hand; None: built when needed).

    Idempotent (a re-sent op or a replayed batch adds nothing) and safe against a concurrent
    registration of the same ref. Returns the photos still on the phone: not stored yet, or stored but
    not (yet) proven held by ``added_by``. Runs inside the caller's transaction; never commits.
    ``added_by`` None: a ref the server vouches for, that counts as one from before the rule.
    """
    return register_refs_bulk(session, [(hazard_id, record_kind, record_id, shas)], added_by=added_by, scope=scope)


def register_refs_bulk(session: Session, refs: Iterable[tuple[str, str | RecordKind, str, Sequence[str]]], *,
                       added_by: str | None = None, scope: Scope | None = None) -> list[str]:
    """``register_refs`` for a whole sync batch: (hazard_id, record_kind, record_id, shas) tuples, all
    attached by ``added_by``; one multi-row INSERT … ON CONFLICT DO NOTHING and one query for what is
    stored and held. Only a photo stored but not held by the adder costs more: whether they may see it
    already (then they could have downloaded it: they become a holder, and the ref counts)."""
    now = utcnow()
    rows: list[dict] = []
    for hazard_id, record_kind, record_id, shas in refs:
        kind = RecordKind(record_kind).value
        for s in _dedupe(valid_name(x, "photos") for x in shas):
            rows.append({"sha256": s, "hazard_id": hazard_id, "record_kind": kind, "record_id": record_id,
                         "created_at": now, "added_by_user_id": added_by})
    _insert_refs(session, rows)
    shas = _dedupe(r["sha256"] for r in rows)
    held = _stored_held(session, shas, added_by)
    unproven = [s for s, h in held.items() if not h]
    if unproven:  # attaching a photo one already sees: an office's action, a worker's reinspection
        seen = _seen(session, scope if scope is not None else _scope_of(session, added_by), unproven)
        if seen:
            session.execute(_insert_ignoring_conflicts(session.get_bind().dialect.name, BlobHolder.__table__),
                            [{"sha256": s, "user_id": added_by, "created_at": now} for s in unproven if s in seen])
            held.update(dict.fromkeys(seen, True))
    return [s for s in shas if not held.get(s)]


def claim_refs(session: Session, record_kind: str | RecordKind, record_id: str, shas: Sequence[str],
               user_id: str | None) -> None:
    """Let the record's refs to these photos that do not count be ``user_id``'s, where they hold the photo.
    A record has one ref per photo (the unique key): a duplicate merged into an original that already named
    the photo unproven adds no ref of its reporter's, who may hold it. Only the merge needs this; a push's
    refs are its own records'."""
    held = [s for s, h in _stored_held(session, _dedupe(shas), user_id).items() if h] if user_id else []
    if held:
        session.execute(sa.update(PhotoRef).where(
            PhotoRef.record_kind == RecordKind(record_kind).value, PhotoRef.record_id == record_id,
            PhotoRef.sha256.in_(held), ~COUNTS).values(added_by_user_id=user_id))


def _stored_held(session: Session, shas: list[str], user_id: str | None) -> dict[str, bool]:
    """The stored ones among ``shas`` -> whether ``user_id`` holds it (None: everyone does)."""
    out: dict[str, bool] = {}
    for i in range(0, len(shas), _CHUNK):
        part = shas[i:i + _CHUNK]
        if user_id is None:
            out.update(dict.fromkeys(session.execute(_STORED, {"shas": part}).scalars(), True))
        else:
            out.update((s, bool(h)) for s, h in session.execute(_STORED_HELD, {"shas": part, "user_id": user_id}))
    return out


def _scope_of(session: Session, user_id: str) -> Scope:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return scope_for(session, user)


def _seen(session: Session, scope: Scope, shas: Sequence[str], *, counting: bool = True) -> set[str]:
    """Those of ``shas`` the scope sees through a record that uses them (``counting``: by refs that count)."""
    out: set[str] = set()
    for i in range(0, len(shas), _CHUNK):
        where = [PhotoRef.sha256.in_(list(shas[i:i + _CHUNK])), hazard_clause(scope)]
        out.update(session.execute(
            select(PhotoRef.sha256).join(Hazard, Hazard.id == PhotoRef.hazard_id)
            .where(*where, COUNTS if counting else sa.true()).distinct()
        ).scalars())
    return out


def missing(session: Session, shas: Sequence[str], store: BlobStore | None = None, *,
            scope: Scope | None = None, seen_out: set[str] | None = None) -> list[str]:
    """The names among ``shas`` that are not stored (input order, no duplicates).

    The ``blobs`` row is the truth; given the store, a row whose file is gone from disk counts
    as missing too, so the phone sends it again and the upload heals it. Given the asker's scope, a
    stored photo they neither hold nor may see counts as missing too: they prove they have it by
    sending it (POST /blobs/missing). ``seen_out`` collects those they do not hold but may see: the caller
    makes them holders (hold_seen), so a record of theirs that named the photo before they could see it
    counts from now on.
    """
    shas = _dedupe(shas)
    if not shas:
        return []
    held = _stored_held(session, shas, scope.user_id if scope is not None else None)
    if store is not None:
        held = {s: h for s, h in held.items() if store.has(s)}
    unproven = [s for s, h in held.items() if not h]
    if unproven:
        seen = _seen(session, scope, unproven) | _uploaded_unused(session, scope, unproven)
        held.update(dict.fromkeys(seen, True))
        if seen_out is not None:
            seen_out |= seen
    return [s for s in shas if not held.get(s)]


def adopt_stored(db: Database, store: BlobStore, uploader: Uploader, shas: Sequence[str],
                 now: datetime | None = None) -> set[str]:
    """Those of ``shas`` (missing for the uploader) whose file is in the store with no ``blobs`` row, written
    between the backup this database was restored from and the restore, and which a record of the uploader's
    own names: given their row back, the uploader as theirs, and returned. A restored backup lacks the rows of
    the photos uploaded after it, while their files stayed in the store; the phone sends its records again
    when told to, and may no longer hold the photos to send. Only in that window: anywhere else a file without
    a row is an upload between publishing and its row, or one a crash cut there, which its uploader sends
    again, and knowing a photo's name must not be enough to see it. The file is hashed against its name and
    checked as an upload is; one that fails stays missing. Blocking (hashing, decoding): call from a worker
    thread."""
    with db.session() as session:
        windows = [((taken - RESEND_MARGIN).timestamp(), restored.timestamp())
                   for taken, restored in restore_windows(session)]
    if not windows:
        return set()
    candidates = [s for s in _dedupe(shas) if (m := _written_at(store, s)) is not None
                  and any(since <= m <= until for since, until in windows)]
    if not candidates:
        return set()
    with db.session() as session:
        own = set(session.execute(
            select(PhotoRef.sha256).outerjoin(Blob, Blob.sha256 == PhotoRef.sha256)
            .where(PhotoRef.sha256.in_(candidates), PhotoRef.added_by_user_id == uploader.user_id,
                   Blob.sha256.is_(None)).distinct()).scalars())
    adopted: set[str] = set()
    for sha in candidates:
        path = store.path(sha)
        try:
            if sha not in own or path is None or sha256_file(path) != sha:
                continue
            info = _validate(path)
            size = path.stat().st_size
        except ImageRejected:
            continue
        except OSError as exc:  # a bad sector under one photo: it stays missing, the answer is still given
            log.warning("photo %s: its file in the store cannot be read: %s", sha, exc)
            continue
        _record_blob(db, PutResult(sha256=sha, size=size, created=False, info=info), uploader, now or utcnow())
        adopted.add(sha)
    return adopted


def _written_at(store: BlobStore, sha: str) -> float | None:
    path = store.path(sha)
    try:
        return path.stat().st_mtime if path is not None else None
    except OSError:  # gone meanwhile
        return None


def hold_seen(db: Database, user_id: str, shas: Iterable[str]) -> None:
    """Make the user a holder of photos they may see (they could download them: as good as sending them), in
    a short write transaction of its own. Without it, a record of theirs that named such a photo before they
    could see it would stay 'on the phone' for good: the phone is told nothing is missing, and its PUT is
    answered without the body."""
    rows = [{"sha256": s, "user_id": user_id, "created_at": utcnow()} for s in shas]
    if rows:
        with db.connect(write=True) as conn:
            conn.execute(_insert_ignoring_conflicts(conn.dialect.name, BlobHolder.__table__), rows)


def pending_for_hazard(session: Session, hazard_id: str) -> list[str]:
    """Photos the hazard's records use that have not arrived yet (the office sees them as 'on the phone'):
    not stored, or named by someone who has not proven they hold them (a ref that does not count)."""
    return pending_for_hazards(session, [hazard_id]).get(hazard_id, [])


def pending_for_hazards(session: Session, hazard_ids: Sequence[str]) -> dict[str, list[str]]:
    """``pending_for_hazard`` for a page of hazards in one query; hazards with nothing pending are absent."""
    if not hazard_ids:
        return {}
    rows = session.exec(
        select(PhotoRef.hazard_id, PhotoRef.sha256)
        .outerjoin(Blob, Blob.sha256 == PhotoRef.sha256)
        .where(PhotoRef.hazard_id.in_(list(hazard_ids)), Blob.sha256.is_(None) | ~COUNTS)
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
    """True if the scope sees a hazard that uses the photo by a ref that counts, or the caller uploaded it and
    no record uses it yet (by a ref that counts: naming a photo proves nothing, and must not take it from
    its uploader). Once a record uses it, its records' jurisdiction decides, for the uploader too: a
    hazard moved or handed out of their grid takes its photos with it."""
    return bool(_seen(session, scope, [sha256]) or _uploaded_unused(session, scope, [sha256]))


def named_in_scope(session: Session, scope: Scope, sha256: str) -> bool:
    """Does the scope see a record that names the photo, by any ref? For one who may not see the photo:
    then it is pending for them (as the record shows it), not unknown."""
    return bool(_seen(session, scope, [sha256], counting=False))


def _uploaded_unused(session: Session, scope: Scope, shas: Sequence[str]) -> set[str]:
    unused = ~sa.exists().where(PhotoRef.sha256 == Blob.sha256, COUNTS)
    return set(session.execute(
        select(Blob.sha256).where(Blob.sha256.in_(list(shas)), Blob.uploaded_by_user_id == scope.user_id, unused)
    ).scalars())


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
_SELECT_STORED = sa.select(*_PUBLIC_COLUMNS, _BLOBS.c.uploaded_by_user_id, _HOLDS.label("held")).where(
    _BLOBS.c.sha256 == sa.bindparam("sha256"))
# Where and when the photo was taken: answered to a re-upload only by its own uploader. The answer to a
# stored photo comes before the body is read, so all the caller has shown is that they know the name.
_EVIDENCE = {"exif_datetime": None, "gps_lat": None, "gps_lon": None}


def begin_upload(db: Database, store: BlobStore, sha256: str, token_hash: str) -> tuple[Uploader, BlobPublic | None]:
    """Before any byte of the body, in one short read transaction: who is uploading (401 first,
    whatever the name), and the photo as the API shows it if it is already stored (row and file;
    its EXIF evidence only to its uploader), so the body need not be read at all. Only to a caller who
    holds the photo or may see it: anyone else proves they have it by sending it (the name alone is
    easy to learn). ``token_hash``: auth_service.token_digest of the bearer token."""
    try:
        name = validate_sha256(sha256)
    except InvalidName:
        name = None
    with db.connect() as conn:
        row = conn.execute(_UPLOAD_CHECK, {"token_hash": token_hash, "sha256": name or ""}).first()
        who = Uploader(*auth_service.ids_of_token_row(row))
        valid_name(sha256)  # a bad name is a 422, said only to a caller with a valid token
        stored = (conn.execute(_SELECT_STORED, {"sha256": name, "user_id": who.user_id}).mappings().first()
                  if row.stored else None)
    if stored is None or not store.has(sha256):
        return who, None
    if not stored["held"]:
        if not _may_view(db, who.user_id, name):
            return who, None  # the body decides: it is read and hashed as a new photo's
        hold_seen(db, who.user_id, [name])  # seeing it is as good as sending it: their records' refs count
    answer = public(stored, False)
    if stored["uploaded_by_user_id"] != who.user_id:
        answer = answer.model_copy(update=_EVIDENCE)
    return who, answer


def _may_view(db: Database, user_id: str, sha256: str) -> bool:
    """may the user see the photo (an upload's rare case: stored, and they do not hold it)?"""
    with db.session() as session:
        return can_view(session, _scope_of(session, user_id), sha256)


def _record_blob(db: Database, put: PutResult[ImageInfo], uploader: Uploader, now: datetime) -> IngestResult:
    """The ``blobs`` row of a published photo, in its own short write transaction; the uploader holds it
    (the first one: by the row's uploaded_by_user_id; one who sent the bytes of a stored photo: a row here)."""
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
        if not inserted and uploader.user_id is not None:
            # the bytes of a stored photo, hashed to its name: a proof of possession
            conn.execute(_insert_ignoring_conflicts(conn.dialect.name, BlobHolder.__table__),
                         {"sha256": put.sha256, "user_id": uploader.user_id, "created_at": now})
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
