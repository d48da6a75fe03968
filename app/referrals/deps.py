"""Request dependencies for the referral chain: the rules in force and the server's clock."""

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request

from app.db import SessionDep
from app.referrals.service import Rules, load_calendar


async def get_now(request: Request) -> datetime:
    # one clock for the app, so tests (and `sweep --now`) can move time without touching the code.
    # async: FastAPI runs a plain-def dependency in a worker thread, a thread hop for reading a clock
    return request.app.state.clock()


def get_rules(request: Request, session: SessionDep) -> Rules:
    return Rules(policy=request.app.state.policy, calendar=load_calendar(session))


NowDep = Annotated[datetime, Depends(get_now)]
RulesDep = Annotated[Rules, Depends(get_rules)]
