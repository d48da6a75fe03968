"""A premises that moves while something else is written about it, on a real PostgreSQL.

There, unlike SQLite, writers run side by side: a move (places.service.update_place) locks the
premises and its hazards and is not yet committed while a push reports a new hazard there, or an
office escalates one of them. Whatever order they commit in, every hazard must end up where its
premises is, held by a body of that place (promises 2 and 3). Each test holds the move open on one
connection, starts the other writer in a thread, waits until that writer is blocked on a lock (or
done), commits the move and checks the outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from app.audit.service import Actor
from app.auth.models import Device, User
from app.auth.scope import scope_for
from app.demo import seed_demo
from app.hazards.models import Hazard
from app.org.models import OrgUnit
from app.places.models import Place, PlaceUpdate
from app.places.service import update_place
from app.referrals.lifecycle import Action, ActionParams
from app.referrals.policy import load_policy
from app.referrals.service import HazardReport, Rules, act, load_calendar, lock_hazard, report_hazard
from app.sync import service as sync
from app.sync.schemas import Op
from tests.conftest import fresh_migrated_engine
from tests.helpers import hazard_data, op, race_behind_lock, uid

from tests.referrals.test_relocation import NOW


class Pg:
    def __init__(self, engine: sa.Engine):
        self.engine = engine
        with Session(engine) as s:
            seed_demo(s, with_hazards=False)
            self.rules = Rules(policy=load_policy(), calendar=load_calendar(s))
            self.units = {u.code: u.id for u in s.exec(select(OrgUnit)).all()}
            self.place_id = s.exec(select(Place).where(Place.grid_id == self.units["grid-a-1-1"],
                                                       Place.place_class == "rental")).first().id
            admin = s.exec(select(User).where(User.username == "admin")).one()
            s.add(Device(id=uid(), user_id=admin.id, device_key="race-phone"))
            s.commit()

    def session(self) -> Session:
        s = Session(self.engine)
        s.execute(sa.text("SET lock_timeout = '20s'"))  # never hang the suite: an ungranted lock is an error
        return s

    def report(self) -> str:
        """An open hazard of the premises, reported before anything moves (held by town A's office)."""
        hid = uid()
        with Session(self.engine) as s:
            report_hazard(s, self.rules, HazardReport(id=hid, place_id=self.place_id, category="ebike_indoor",
                                                      severity="general", violation=False, description="x",
                                                      found_at=NOW), s.get(Place, self.place_id), Actor.system(), NOW)
            s.commit()
        return hid

    def push_context(self, session: Session) -> sync.PushContext:
        admin = session.exec(select(User).where(User.username == "admin")).one()
        device = session.exec(select(Device).where(Device.device_key == "race-phone")).one()
        return sync.PushContext(session=session, rules=self.rules, scope=scope_for(session, admin), user=admin,
                                device=device, now=NOW)

    def move_held_open(self) -> Session:
        """Town A's premises moved to town B on a session left uncommitted: its row and its hazards' locked."""
        mover = self.session()
        update_place(mover, None, mover.get(Place, self.place_id), PlaceUpdate(grid_id=self.units["grid-b-1-1"]),
                     rules=self.rules)
        mover.flush()
        return mover

    def race(self, held: Session, writer: Session, write: Callable[[], None]) -> None:
        """Run ``write`` (committing on ``writer``) in a thread; commit ``held`` (the move, say) once the
        writer waits for a lock or is done; fail if the writer failed. Both sessions are closed after."""
        try:
            race_behind_lock(self.engine, held, writer, write)
        finally:
            held.close()
            writer.close()

    def where(self, hazard_id: str) -> tuple[str, str, str]:
        """(the hazard's town, its holder's town, the town its premises is in)."""
        with Session(self.engine) as s:
            h, p = s.get(Hazard, hazard_id), s.get(Place, self.place_id)
            return h.town_id, s.get(OrgUnit, h.holder_unit_id).town_id, p.town_id


@pytest.fixture
def pg(tmp_path) -> Iterator[Pg]:
    with fresh_migrated_engine("postgresql", tmp_path) as engine:  # skips without PostgreSQL
        yield Pg(engine)


def _report_op(place_id: str) -> Op:
    return Op.model_validate(op("hazard.report", hazard_data(place_id, NOW - timedelta(minutes=1), photos=[])))


# How a push can reach its hazard.report: planned on a read transaction before the write one (a
# batch of creations, as the HTTP endpoint does), planned on the writer (a creation run inside a
# mixed batch), or applied alone in a savepoint (the fallback when a bulk write is refused).
def _planned_before(pg: Pg, ops: list[Op], writer: Session) -> Callable[[], list]:
    with Session(pg.engine, expire_on_commit=False) as reader:  # its user and device outlive it
        ctx = pg.push_context(reader)
        plan = sync.plan_push(ctx, ops)  # routed for town A: the move is not committed
        reader.commit()
    return lambda: sync.apply_push(ctx, ops, plan, writer)


def _planned_on_writer(pg: Pg, ops: list[Op], writer: Session) -> Callable[[], list]:
    return lambda: sync.apply_push(pg.push_context(writer), ops, None, writer)


def _one_op(pg: Pg, ops: list[Op], writer: Session) -> Callable[[], list]:
    return lambda: [sync._apply_one(pg.push_context(writer), ops[0], {})]


@pytest.mark.parametrize("how", [_planned_before, _planned_on_writer, _one_op])
def test_a_hazard_pushed_while_its_premises_moves_is_written_where_the_premises_went(pg, how):
    ops = [_report_op(pg.place_id)]
    writer = pg.session()
    push = how(pg, ops, writer)
    mover = pg.move_held_open()
    results: list = []
    pg.race(mover, writer, lambda: results.extend(push()))
    [res] = results
    assert res.status == "applied", res
    town_b = pg.units["town-b"]
    assert pg.where(res.result["hazard_id"]) == (town_b, town_b, town_b)
    assert res.result["holder_org_unit_id"] == pg.units["office-b"]  # and the phone is told so


def test_a_hazard_escalated_while_its_premises_moves_goes_to_the_police_of_the_new_town(pg):
    # What serialises the two is PostgreSQL's foreign-key check: an action updates the hazard's row twice
    # (its state, then its event chain), and the second update of a row this transaction wrote checks
    # the premises FOR KEY SHARE, which the move's FOR UPDATE waits for. This test catches the day that
    # stops holding (the move would plan from the holder before the escalation and leave it in town A).
    hid = pg.report()
    office = pg.session()
    h = lock_hazard(office, hid)  # the office escalates it and has not committed yet
    act(office, pg.rules, h, Action.ESCALATE, ActionParams(reason="需派出所处理"),
        Actor.system(), NOW)
    office.flush()
    mover = pg.session()
    # now the move waits for the escalation: the office's commit is what the race releases
    pg.race(office, mover, lambda: update_place(mover, None, mover.get(Place, pg.place_id),
                                                PlaceUpdate(grid_id=pg.units["grid-b-1-1"]), rules=pg.rules))
    town_b = pg.units["town-b"]
    assert pg.where(hid) == (town_b, town_b, town_b)
    with Session(pg.engine) as s:
        h = s.get(Hazard, hid)
        assert (h.tier, h.holder_unit_id) == ("police_station", pg.units["police-b"])


def test_two_concurrent_moves_leave_holder_and_location_agreeing(pg):
    hid = pg.report()
    first = pg.move_held_open()  # to town B
    second = pg.session()
    pg.race(first, second, lambda: update_place(second, None, second.get(Place, pg.place_id),
                                                PlaceUpdate(grid_id=pg.units["grid-a-2-1"]), rules=pg.rules))
    with Session(pg.engine) as s:
        p, h = s.get(Place, pg.place_id), s.get(Hazard, hid)
        grid = s.get(OrgUnit, p.grid_id)
        # the last move wins, whole: premises, hazard and holder all in the grid's town and community
        assert p.grid_id == pg.units["grid-a-2-1"]
        assert (p.town_id, p.community_id) == (grid.town_id, grid.community_id), \
            f"premises in a grid of {grid.town_id} but recorded in town {p.town_id}"
        assert (h.grid_id, h.town_id, h.community_id) == (p.grid_id, p.town_id, p.community_id)
        assert s.get(OrgUnit, h.holder_unit_id).town_id == grid.town_id
