"""Every table, imported in one place so Alembic and the tests see the whole schema."""

from sqlmodel import SQLModel

from app.auth.models import AuthToken, Device, LoginFailure, User  # noqa: F401
from app.org.models import OrgUnit  # noqa: F401
from app.places.models import Place  # noqa: F401

metadata = SQLModel.metadata
