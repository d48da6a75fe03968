from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field, field_validator

from app.errors import reject_nul, reject_number_as_time
from app.photos.schemas import Photos


class PlaceBrief(BaseModel):
    id: str
    name: str
    address: str
    place_class: str


class HazardItem(BaseModel):
    """A row of a queue: enough to triage without opening the hazard."""

    id: str
    status: str
    tier: str
    holder_org_unit_id: str
    severity: str
    category: str
    violation: bool
    place: PlaceBrief
    grid_id: str
    community_id: str
    found_at: datetime
    created_at: datetime
    deadline: datetime | None
    overdue: bool
    listed_supervision: bool
    attention: int
    duplicate_of_id: str | None


class QueuePage(BaseModel):
    items: list[HazardItem]
    next_cursor: str | None


class Routing(BaseModel):
    rule: str
    reason: str
    reason_zh: str
    reason_en: str
    policy_version: str


class HazardDetail(HazardItem):
    description: str
    photos: list[str]
    photos_pending: list[str]  # referenced by a record but not uploaded yet: still on the phone
    routing: Routing
    clocks: dict[str, dict[str, Any]]
    cc_org_unit_ids: list[str]
    merged_into_id: str | None
    closed_at: datetime | None
    deadline_met: bool | None
    listed_at: datetime | None = None  # 挂牌督办 since
    listing_raised_at: datetime | None = None  # raised to the next level up, six months on unrectified
    referrals: list[dict[str, Any]]
    reinspections: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    allowed_actions: list[str]
    version: int  # bumped by every change of the hazard; the ETag names it, and If-Match is compared with it


class ActionRequest(BaseModel):
    action: Literal["accept", "order_rectification", "escalate", "transfer", "return", "dismiss",
                    "record_reinspection", "close", "reopen", "merge", "owner_reported_fixed"]
    deadline: Annotated[AwareDatetime, BeforeValidator(reject_number_as_time)] | None = None
    reason: str | None = Field(default=None, max_length=500)
    to_unit_id: str | None = Field(default=None, max_length=36)
    rectified: bool | None = None
    # checked here, before the action changes anything (a lone surrogate reached the flush: a 500)
    photos: Photos = Field(default_factory=list, max_length=20)
    override_reason: str | None = Field(default=None, max_length=500)
    merge_into_id: str | None = Field(default=None, max_length=36)
    note: str | None = Field(default=None, max_length=2000)

    # refused as it arrives, naming the field: SQLite stored a NUL in the timeline, PostgreSQL refused it
    # with a 422 that named nothing, or (an id) looked it up first
    _no_nul = field_validator("reason", "to_unit_id", "override_reason", "merge_into_id", "note")(reject_nul)


class FiguresRow(BaseModel):
    key: str
    found: int
    closed: int
    open: int
    overdue: int
    cleared_by_deadline_rate: float | None
    median_hours_to_close: float | None


class Figures(BaseModel):
    unit_id: str
    period_from: datetime
    period_to: datetime
    group_by: str
    total: FiguresRow
    rows: list[FiguresRow]
