"""Seeding the demo again finds its accounts whatever their case: usernames are one account in any case."""

import sqlalchemy as sa
from sqlmodel import select

from app.auth.models import User
from app.demo import seed_demo


def test_seeding_again_finds_an_account_renamed_in_another_case(session):
    session.execute(sa.update(User).where(User.username == "admin").values(username="Admin"))
    seed_demo(session, with_hazards=False)  # was a 409 username_taken: it looked for "admin" exactly
    assert session.exec(select(User.username).where(sa.func.lower(User.username) == "admin")).all() == ["Admin"]
