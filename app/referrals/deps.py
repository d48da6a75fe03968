"""Request dependencies for the referral chain: the rules in force and the server's clock."""

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request

from app.db import SessionDep
from app.referrals.service import Rules, calendar_for_writing


async def get_now(request: Request) -> datetime:
    # one clock for the app, so tests (and `sweep --now`) can move time without touching the code.
    # async: FastAPI runs a plain-def dependency in a worker thread, a thread hop for reading a clock
    return request.app.state.clock()


def get_rules(request: Request, session: SessionDep) -> Rules:
    # the request counts clocks with this calendar: on PostgreSQL an admin's save of overrides waits until
    # the request commits (and re-times what it wrote), or the request waits for the save. Taken here, before
    # the endpoint locks any row, as save_overrides takes it before its own (no deadlock)
    return Rules(policy=request.app.state.policy, calendar=calendar_for_writing(session))


NowDep = Annotated[datetime, Depends(get_now)]
RulesDep = Annotated[Rules, Depends(get_rules)]
