"""Every table, imported in one place so Alembic and the tests see the whole schema."""

from sqlmodel import SQLModel

from app.audit.models import HazardEvent  # noqa: F401
from app.auth.models import AuthToken, Device, LoginFailure, User  # noqa: F401
from app.hazards.models import Hazard, HazardCC, Referral, Reinspection  # noqa: F401
from app.inspections.models import Inspection  # noqa: F401
from app.org.models import OrgUnit  # noqa: F401
from app.photos.models import Blob, BlobHolder, PhotoRef  # noqa: F401
from app.places.models import Place  # noqa: F401
from app.referrals.models import WorkdayOverride  # noqa: F401
from app.sync.feed import Change, ChangeFeedState  # noqa: F401
from app.sync.models import SyncOp  # noqa: F401

metadata = SQLModel.metadata
