"""Request and response bodies of /api/v1/blobs."""

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

MAX_MISSING_QUERY = 500
SHA256 = r"^[0-9a-f]{64}$"


def _check_shas(v: list[str]) -> list[str]:
    out = []
    for s in v:
        s = s.lower()
        if not re.fullmatch(SHA256, s):
            raise ValueError(f"{s[:70]!r} is not a sha256 (64 hex characters)")
        out.append(s)
    return list(dict.fromkeys(out))


# photo names as a record lists them (an op's, an action's): lower-cased sha256 hex, each once, in the order given
Photos = Annotated[list[str], AfterValidator(_check_shas)]


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
