"""Request and response bodies of /api/v1/blobs."""

from datetime import datetime

from pydantic import BaseModel, Field

MAX_MISSING_QUERY = 500


class MissingQuery(BaseModel):
    # names are checked one by one in the router so the error can name the bad entry
    sha256: list[str] = Field(max_length=MAX_MISSING_QUERY)


class MissingAnswer(BaseModel):
    missing: list[str]


class BlobPublic(BaseModel):
    """What PUT answers (201 stored / 200 already stored)."""

    sha256: str
    size: int
    mime: str
    width: int
    height: int
    created: bool  # True: this upload stored it; False: it was already there
    exif_datetime: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    orientation: int | None = None
    created_at: datetime | None = None
