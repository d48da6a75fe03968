"""Two reports of one category at one premises, pushed at the same time by two phones: as one push after
the other, the second names the first as the open hazard it repeats (``duplicate_of_id``, the office's
hint to merge them). Before, each push looked for an open hazard before the other had committed, found
none, and both were stored naming nothing (11 to 21 of 32 pairs in tests/sync/test_two_phones_at_once.py).

On PostgreSQL (READ COMMITTED) a push holds an advisory lock on each premises it reports hazards at and
looks again once it has it; a push planned on a read transaction before its write one (the HTTP endpoint,
on SQLite too) checks again, under the write lock, what it planned.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from app.auth.models import Device
from app.hazards.models import Hazard
from app.places.models import Place
from app.referrals.service import earliest_open
from app.sync import service as sync
from app.sync.schemas import Op
from tests.conftest import fresh_migrated_engine, login
from tests.helpers import hazard_data, op, place_of, push, uid
from tests.sync.test_push import NOW, place, worker  # noqa: F401  (place, worker: fixtures)
from tests.sync.test_push_inspection_link import _inspection, _stored
from tests.sync.test_push_link_race import WAYS, Pg, Phone, _race, _stale_plan


@pytest.fixture(scope="module")
def pg(tmp_path_factory) -> Iterator[Pg]:
    with fresh_migrated_engine("postgresql", tmp_path_factory.mktemp("duplicate-race")) as engine:  # skips without it
        pg = Pg(engine)
        a = pg.phones["a"]
        with Session(engine) as s:  # the same worker's second phone: both see premises P1
            device = Device(id=uid(), user_id=a.user.id, device_key="race-phone-a2")
            s.add(device)
            s.commit()
            s.refresh(device)
            s.expunge(device)
        pg.phones["a2"] = Phone(a.user, device, a.scope, a.place_id)
        yield pg


def _report(place_id: str, category: str, *, inside: bool) -> tuple[str, Op]:
    """(hazard id, the op): a hazard.report of its own, or an inspection.submit listing it."""
    hazard = hazard_data(place_id, NOW - timedelta(minutes=1), category=category, photos=[])
    data = _inspection(place_id, hazard) if inside else hazard
    return hazard["id"], Op.model_validate(op("inspection.submit" if inside else "hazard.report", data))


def _new_place(pg: Pg) -> str:
    """A premises of its own for each round, in phone A's grid, with nothing reported there yet."""
    with Session(pg.engine) as s:
        p1 = s.get(Place, pg.phones["a"].place_id)
        new = Place(id=uid(), name="重复隐患测试", address="测试路2号", grid_id=p1.grid_id, town_id=p1.town_id,
                      community_id=p1.community_id, place_class="rental")
        s.add(new)
        s.commit()
        return new.id


@pytest.mark.parametrize("inside", [False, True], ids=["on its own", "inside an inspection"])
@pytest.mark.parametrize("way", list(WAYS))
def test_a_push_held_open_and_another_at_once_the_second_names_the_first(pg, way, inside, monkeypatch):
    """Phone A's report is applied and held open (not committed); the same worker's second phone's report of
    the same category at the same premises is applied meanwhile, waits for A's lock on the premises, and is written once A has
    committed: it names A's hazard. Without the lock it waited for nothing and named nothing."""
    if way == "op by op":
        monkeypatch.setattr(sync, "_write_run", lambda ctx, plan: None)
    how = WAYS[way]
    place_id, category = _new_place(pg), "window_bars"
    first_id, first_op = _report(place_id, category, inside=False)
    later_id, later_op = _report(place_id, category, inside=inside)
    held = pg.session()
    [held_result] = how(pg, pg.phones["a"], [first_op], held)()  # applied, not committed
    writer = pg.session()
    [later_result] = _race(pg, held, writer, how(pg, pg.phones["a2"], [later_op], writer))
    assert held_result.status == later_result.status == "applied", (held_result, later_result)
    with Session(pg.engine) as s:
        stored = {h.id: h.duplicate_of_id for h in s.exec(select(Hazard).where(Hazard.place_id == place_id))}
    assert stored == {first_id: None, later_id: first_id}
    answered = held_result.result["duplicate_of_id"], (later_result.result["hazards"][0] if inside
                                                       else later_result.result)["duplicate_of_id"]
    assert answered == (None, first_id)


# -- a plan made before the write transaction, and the open hazards changed in between (both backends) ----


def test_a_report_planned_before_another_of_the_same_was_written_names_it(clocked_client, worker, place, session):
    """Phone B's report is planned while nothing of its category is open at the premises; phone A's report
    of the same is written; then B's: it names A's, as if they had come in turn."""
    login(clocked_client, "worker-a1", device="phone-b")
    late = hazard_data(place.id, NOW, category="window_bars")
    write_late = _stale_plan(clocked_client, "worker-a1", "phone-b", [op("hazard.report", late)])
    [early] = push(clocked_client, worker, op("hazard.report", hazard_data(place.id, NOW, category="window_bars")))
    assert (early["status"], early["result"]["duplicate_of_id"]) == ("applied", None), early
    [r] = write_late()
    assert (r["status"], r["result"]["duplicate_of_id"]) == ("applied", early["result"]["hazard_id"]), r
    assert _stored(session, late["id"]).duplicate_of_id == early["result"]["hazard_id"]


def test_a_report_planned_while_its_duplicate_was_open_names_nothing_once_that_is_closed(
        clocked_client, worker, place, session):
    """The open hazard a planned report repeats is closed before the report is written: the report names no
    closed hazard as the one to merge it with."""
    [open_one] = push(clocked_client, worker, op("hazard.report", hazard_data(place.id, NOW, category="sandwich_panel")))
    login(clocked_client, "worker-a1", device="phone-b")
    late = hazard_data(place.id, NOW, category="sandwich_panel")
    write_late = _stale_plan(clocked_client, "worker-a1", "phone-b", [op("hazard.report", late)])
    closed = session.get(Hazard, open_one["result"]["hazard_id"])
    closed.status = "closed"
    session.commit()
    [r] = write_late()
    assert (r["status"], r["result"]["duplicate_of_id"]) == ("applied", None), r
    assert _stored(session, late["id"]).duplicate_of_id is None


def test_earliest_open_answers_only_the_pairs_asked(clocked_client, worker, place, session, units):
    """Premises and categories are looked up as two lists: an open hazard of one premises' category asked
    only for another premises is not an answer."""
    other = place_of(session, units, "grid-a-1-1", "nine_small")
    [a] = push(clocked_client, worker, op("hazard.report", hazard_data(place.id, NOW, category="window_bars")))
    [b] = push(clocked_client, worker, op("hazard.report", hazard_data(other.id, NOW, category="lpg_misuse")))
    asked = [(place.id, "lpg_misuse"), (other.id, "window_bars"), (place.id, "window_bars")]
    assert earliest_open(session, asked) == {(place.id, "window_bars"): a["result"]["hazard_id"]}
    assert earliest_open(session, [(other.id, "lpg_misuse")]) == {(other.id, "lpg_misuse"): b["result"]["hazard_id"]}
    assert earliest_open(session, []) == {}


def test_a_later_report_names_the_first_of_an_earlier_batch_not_its_duplicate(clocked_client, worker, place):
    """The hazards of one push share a created_at, and of two reports of the same the later names the first.
    The next report names the first, whichever id sorts first (ids are the phones', random)."""
    first = hazard_data(place.id, NOW, category="window_bars", id="ffffffff-0000-4000-8000-000000000001")
    second = hazard_data(place.id, NOW, category="window_bars", id="00000000-0000-4000-8000-000000000002")
    r1, r2 = push(clocked_client, worker, op("hazard.report", first), op("hazard.report", second))
    assert (r1["result"]["duplicate_of_id"], r2["result"]["duplicate_of_id"]) == (None, first["id"])
    [r3] = push(clocked_client, worker, op("hazard.report", hazard_data(place.id, NOW, category="window_bars")))
    assert r3["result"]["duplicate_of_id"] == first["id"], r3


@pytest.mark.parametrize("way", ["bulk", "op by op"])
def test_the_next_report_names_the_first_of_a_push_whose_first_named_a_hazard_it_closed(
        clocked_client, clock, worker, place, session, way, monkeypatch):
    """One push: report A (it names H0, open), a re-inspection that closes H0, report B (H0 is closed: it names
    A). A came first, so the next report names A, whichever id sorts first. Both name a hazard, so "the one
    that names none" would not tell them apart: the first is the one that names no hazard of its own push."""
    if way == "op by op":
        monkeypatch.setattr(sync, "_write_run", lambda ctx, plan: None)
    [h0] = push(clocked_client, worker, op("hazard.report", hazard_data(place.id, NOW, category="window_bars")))
    h0_id = h0["result"]["hazard_id"]
    stored = session.get(Hazard, h0_id)
    stored.status = "accepted"  # a re-inspection may close it (lifecycle.ALLOWED)
    session.add(stored)
    session.commit()
    clock.now += timedelta(minutes=5)
    a = hazard_data(place.id, NOW, category="window_bars", id="ffffffff-0000-4000-8000-00000000000a")
    b = hazard_data(place.id, NOW, category="window_bars", id="00000000-0000-4000-8000-00000000000b")
    ra, rr, rb = push(clocked_client, worker, op("hazard.report", a),
                      op("hazard.reinspect", {"id": uid(), "hazard_id": h0_id, "rectified": True,
                                              "at": NOW.isoformat(), "photos": ["b" * 64]}),
                      op("hazard.report", b))
    assert rr["status"] == "applied" and rr["result"]["status"] == "closed", rr
    assert (ra["result"]["duplicate_of_id"], rb["result"]["duplicate_of_id"]) == (h0_id, a["id"]), (ra, rb)
    clock.now += timedelta(minutes=5)
    [rc] = push(clocked_client, worker, op("hazard.report", hazard_data(place.id, NOW, category="window_bars")))
    assert rc["result"]["duplicate_of_id"] == a["id"], "named a duplicate of the first, not the first"

