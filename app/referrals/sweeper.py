"""Overdue escalation: `firegrid sweep [--now T]` and the periodic in-process sweep.

Safe with several workers: each hazard is re-checked under its row lock (PostgreSQL skips rows
another sweeper holds), and an escalation restarts the clocks, so nothing escalates twice.
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from app.db import Database
from app.referrals.policy import Policy
from app.referrals.service import Escalation, Rules, calendar_for_writing, sweep_chunk

log = logging.getLogger("firegrid.sweep")

CHUNK = 500


def run_sweep(db: Database, policy: Policy, now: datetime) -> list[Escalation]:
    done: list[Escalation] = []
    while True:  # in chunks, each its own transaction, until nothing is due
        with db.session(write=True) as session:
            # an escalation restarts clocks: counted with a calendar no save changes until this commits
            chunk = sweep_chunk(session, Rules(policy, calendar_for_writing(session)), now, limit=CHUNK)
            session.commit()
        done += chunk.escalations
        if chunk.looked_at < CHUNK or not chunk.changed:  # nothing more due, or only rows another sweeper holds
            return done


async def periodic_sweep(db: Database, policy: Policy, clock: Callable[[], datetime], interval: float,
                         chores: Sequence[Callable[[datetime], object]] = ()) -> None:
    """Every ``interval`` seconds: the sweep, then each of ``chores`` (housekeeping of other domains, such
    as forgetting expired login failures), each in a worker thread, given the same instant."""
    while True:
        await asyncio.sleep(interval)
        now = clock()
        try:
            escalated = await asyncio.to_thread(run_sweep, db, policy, now)
            if escalated:
                log.info("sweep escalated %d hazards", len(escalated))
        except Exception:  # a failed sweep must not kill the server; the next one retries
            log.exception("sweep failed")
        for chore in chores:
            try:
                await asyncio.to_thread(chore, now)
            except Exception:  # nor a failed chore, nor does it stop the ones after it
                log.exception("periodic chore %s failed", getattr(chore, "__name__", chore))
