"""What the phone sends: a batch of ops, each with a client-made op_id and typed data."""

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from app.errors import reject_bool_as_number, reject_nul, reject_number_as_time
from app.photos.schemas import Photos

# client-made record ids: UUIDs, tolerant of ULIDs and dashes; at most 36, the width of the columns they go
# in (a longer one failed the INSERT on PostgreSQL, a 500 that took the whole batch down, on every re-send)
UUIDISH = r"^[0-9A-Za-z][0-9A-Za-z\-]{7,35}$"
MAX_OPS = 500


def _in_utc_range(v: datetime) -> datetime:
    # stored in UTC: 0001-01-01T00:30+01:00 has no UTC instant, and would fail only at the INSERT (a 500
    # that took the whole batch down)
    try:
        v.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("out of range (no such instant in UTC)") from None
    return v


# a time as the device saw it, with its offset: kept as data, never used to order anything
DeviceTime = Annotated[AwareDatetime, BeforeValidator(reject_number_as_time), AfterValidator(_in_utc_range)]


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    _text = field_validator("*")(reject_nul)


# a position: true is not latitude 1 (pydantic's lax float takes it)
Coordinate = Annotated[float, BeforeValidator(reject_bool_as_number)]


class PlaceUpsertData(_Data):
    id: str = Field(pattern=UUIDISH)
    name: str = Field(min_length=1, max_length=200)
    address: str = Field(default="", max_length=300)
    grid_id: str = Field(max_length=36)
    place_class: str = Field(max_length=32)
    lat: Coordinate | None = Field(default=None, ge=-90, le=90)
    lon: Coordinate | None = Field(default=None, ge=-180, le=180)
    owner_name: str = Field(default="", max_length=100)
    owner_phone: str = Field(default="", max_length=40)
    # the premises' ``version`` in the copy the edit was made on (pull sends it); absent: an app that predates it
    base_version: int | None = Field(default=None, ge=1, le=2**31 - 1)


class HazardReportData(_Data):
    id: str = Field(pattern=UUIDISH)
    place_id: str = Field(max_length=36)
    inspection_id: str | None = Field(default=None, max_length=36)
    category: str = Field(min_length=1, max_length=64)
    severity: Literal["general", "major"]
    violation: bool = False
    description: str = Field(default="", max_length=2000)
    found_at: DeviceTime
    photos: Photos = Field(default_factory=list, max_length=20)


class ChecklistItem(_Data):
    item: str = Field(min_length=1, max_length=64)
    result: Literal["pass", "fail", "na"]
    note: str = Field(default="", max_length=500)


class InspectionSubmitData(_Data):
    id: str = Field(pattern=UUIDISH)
    place_id: str = Field(max_length=36)
    started_at: DeviceTime
    finished_at: DeviceTime | None = None
    lat: Coordinate | None = Field(default=None, ge=-90, le=90)
    lon: Coordinate | None = Field(default=None, ge=-180, le=180)
    checklist: list[ChecklistItem] = Field(default_factory=list, max_length=200)
    hazards: list[HazardReportData] = Field(default_factory=list, max_length=50)


class HazardReinspectData(_Data):
    id: str = Field(pattern=UUIDISH)
    hazard_id: str = Field(max_length=36)
    rectified: bool
    note: str = Field(default="", max_length=2000)
    at: DeviceTime
    photos: Photos = Field(default_factory=list, max_length=20)


OP_TYPES: dict[str, type[_Data]] = {
    "place.upsert": PlaceUpsertData,
    "inspection.submit": InspectionSubmitData,
    "hazard.report": HazardReportData,
    "hazard.reinspect": HazardReinspectData,
}


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


MAX_OP_ID = 64  # the op log's key column (app/sync/models.py SyncOp.op_id)


def _usable_op_id(value: Any) -> str | None:
    # text the op log can key it by (PostgreSQL stores no NUL), or None. Not with U+FFFD either: the body's
    # parser put it for a lone surrogate (parse_push), so it is not the id the phone sent, and two such ids
    # could become one
    ok = isinstance(value, str) and 0 < len(value) <= MAX_OP_ID and "\x00" not in value and "\ufffd" not in value
    return value if ok else None


def _documented_envelope(schema: dict[str, Any]) -> None:
    # the contract (API.md): an op has an op_id and a type, both text; the model only refuses them op by op
    schema["properties"]["op_id"] = {"type": "string", "minLength": 1, "maxLength": MAX_OP_ID, "title": "Op Id"}
    schema["properties"]["type"] = {"type": "string", "title": "Type"}
    schema["required"] = sorted({*schema.get("required", ()), "op_id", "type"})


class Op(BaseModel):
    model_config = ConfigDict(json_schema_extra=_documented_envelope)

    # op_id, type and data are checked op by op: one malformed op must not turn the whole batch into a 422,
    # which the phone would re-send, and be refused, for ever, the good ops with it.
    # op_id missing, not text, empty, too long or with a NUL: None, the op rejected as bad_op_id
    # (app/sync/router.py), before anything is looked up or written under it
    op_id: Annotated[str | None, BeforeValidator(_usable_op_id)] = None
    # type missing, or not text: None, which apply_op rejects as this op's validation_error
    type: Annotated[str | None, BeforeValidator(_text_or_none)] = None
    data: Any = Field(default_factory=dict, description="an object, whose fields the op type defines")

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value: Any) -> Any:
        # an op that is not an object at all has no op_id either: rejected alone as bad_op_id, in its place
        return value if isinstance(value, dict) else {}


class PushRequest(BaseModel):
    device_id: str | None = Field(default=None, max_length=128)
    ops: list[Op]
    # the phone's clock when it sent the batch: how far off it is is recorded, never trusted
    sent_at: Annotated[AwareDatetime, BeforeValidator(reject_number_as_time)] | None = None
    app_version: str | None = Field(default=None, max_length=40)

    _text = field_validator("device_id", "app_version")(reject_nul)


class OpError(BaseModel):
    code: str
    message: str
    field: str | None = None


class OpResult(BaseModel):
    # null only for an op whose op_id was refused (bad_op_id): the results are one per op, in order, so the
    # phone finds that op by its position. Not the value stringified (5 -> "5"): another op may have that
    # op_id, and a phone matching by op_id would take this rejection for that op's answer and drop it.
    op_id: str | None
    status: Literal["applied", "duplicate", "rejected"]
    error: OpError | None = None
    result: dict[str, Any] | None = None


class PushResponse(BaseModel):
    results: list[OpResult]
    server_time: datetime | None = None
    clock_offset_s: float | None = None  # the phone's clock minus the server's, when it sent sent_at
    clock_flagged: bool = False  # off by more than the tolerance: the phone should fix its clock


class DeviceHealthPublic(BaseModel):
    device_id: str
    name: str
    user_id: str
    username: str
    display_name: str
    org_unit_id: str
    last_push_at: datetime | None
    last_pull_at: datetime | None
    last_sync_at: datetime | None
    days_since_sync: float | None
    stale: bool
    pending_media: int
    clock_offset_s: float | None
    clock_flagged: bool
    app_version: str | None
    revoked: bool
