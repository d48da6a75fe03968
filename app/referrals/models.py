"""Working-day overrides admins add for years the chinese-calendar package does not know yet."""

from datetime import date

from sqlmodel import Field, SQLModel


class WorkdayOverride(SQLModel, table=True):
    __tablename__ = "workday_overrides"

    day: date = Field(primary_key=True)
    is_workday: bool
    note: str = Field(default="", max_length=200)  # e.g. 2027 春节 / 调休上班
