"""Photos (现场照片) as content-addressed blobs, and which records use them.

``blobs``: one row per stored original, written only after the bytes are on disk, hash-checked
and fully decoded. EXIF capture time and GPS are kept as evidence (device data, never trusted
for ordering).

``photo_refs``: which hazard record uses which photo. ``sha256`` is deliberately NOT a foreign
key: a phone syncs the record first and the photo later (or the other way round), so a ref can
exist before its blob. A ref whose blob is absent is a photo "still on the phone".

Proof of possession: a name is easy to learn (a photo shown to someone, a hash forwarded in a chat), so
naming a photo in a record proves nothing. A photo's first uploader (``blobs.uploaded_by_user_id``) holds
it, and ``blob_holders`` lists the others who proved they hold the bytes, by uploading a body that hashed
to the name or attaching it while they could see it. A ref *counts* (lets
those who see its record see the photo; the photo has "arrived" for that record) only if whoever attached
it (``photo_refs.added_by_user_id``) is a holder; refs from before this rule (NULL) count.
"""

from datetime import datetime
from enum import Enum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import UTCDateTime, utcnow


class RecordKind(str, Enum):
    hazard = "hazard"  # the report itself (hazard.report / inspection.submit)
    reinspection = "reinspection"  # 复查 from the field or the desk
    action = "action"  # evidence attached to a desk action (POST /hazards/{id}/actions)


class Blob(SQLModel, table=True):
    __tablename__ = "blobs"

    sha256: str = Field(primary_key=True, max_length=64)
    size: int = Field(sa_type=sa.BigInteger)
    mime: str = Field(max_length=32)
    width: int  # as stored, before the EXIF orientation
    height: int
    exif_datetime: str | None = Field(default=None, max_length=32)  # DateTimeOriginal as written (camera-local)
    gps_lat: float | None = None
    gps_lon: float | None = None
    orientation: int | None = None  # EXIF 1..8
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    uploaded_by_user_id: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    uploaded_by_device_id: str | None = Field(default=None, max_length=36)


class BlobHolder(SQLModel, table=True):
    """A user who proved they hold the photo's bytes: they uploaded a body that hashed to its name, or
    attached it to a record while they could already see it (then they could have downloaded it). The
    first uploader is not listed: ``blobs.uploaded_by_user_id`` says it (no second write per upload)."""

    __tablename__ = "blob_holders"

    sha256: str = Field(primary_key=True, foreign_key="blobs.sha256", max_length=64)
    user_id: str = Field(primary_key=True, foreign_key="users.id", max_length=36)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PhotoRef(SQLModel, table=True):
    __tablename__ = "photo_refs"
    __table_args__ = (
        # also serves lookups by sha256 (its leading column): no separate index needed
        sa.UniqueConstraint("sha256", "record_kind", "record_id"),
        sa.Index("ix_photo_refs_hazard_id", "hazard_id"),
        sa.CheckConstraint("record_kind IN ('hazard', 'reinspection', 'action')", name="record_kind"),
    )

    id: int | None = Field(default=None, primary_key=True)
    sha256: str = Field(max_length=64)  # not a foreign key: the record may arrive before the photo
    hazard_id: str = Field(foreign_key="hazards.id", max_length=36)
    record_kind: str = Field(max_length=16)
    record_id: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # who attached the photo to the record; the ref counts only if they hold it (NULL: from before the rule)
    added_by_user_id: str | None = Field(default=None, foreign_key="users.id", max_length=36)
