"""Two sweepers at once (two server workers, or a cron `firegrid sweep` beside the in-process sweep)
escalate each overdue hazard exactly once. Real commits on a fresh database of each backend."""

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import Session, func, select

from app import migrate
from app.audit.models import HazardEvent
from app.audit.service import Actor
from app.db import Database, make_engine
from app.demo import seed_demo
from app.hazards.models import Hazard
from app.places.models import Place
from app.referrals.policy import load_policy
from app.referrals.service import HazardReport, Rules, load_calendar, report_hazard
from app.referrals.sweeper import run_sweep
from tests.conftest import fresh_database_url
from tests.helpers import uid

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_parallel_sweeps_escalate_once(backend, tmp_path):
    url, cleanup = fresh_database_url(backend, tmp_path)
    migrate.upgrade(url)
    db = Database(make_engine(url))
    policy = load_policy()
    try:
        with db.session(write=True) as s:
            seed_demo(s, with_hazards=False)
            places = s.exec(select(Place).where(Place.place_class == "rental")).all()
            rules = Rules(policy, load_calendar(s))
            ids = [uid() for _ in range(60)]
            for i, hid in enumerate(ids):
                p = places[i % len(places)]
                report_hazard(s, rules, HazardReport(id=hid, place_id=p.id, category="ebike_indoor", severity="general",
                                                     violation=False, description="", found_at=T0), p, Actor(), T0)
            s.commit()
        later = T0 + timedelta(days=3)
        results: list = []
        errors: list = []

        def sweeper():
            try:
                results.append(run_sweep(db, policy, later))
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=sweeper) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        escalated = [e.hazard_id for chunk in results for e in chunk]
        assert len(escalated) == len(set(escalated)) == 60 and set(escalated) == set(ids)
        with Session(db.engine) as s:
            per_hazard = s.exec(select(HazardEvent.hazard_id, func.count()).where(HazardEvent.kind == "escalated")
                                .group_by(HazardEvent.hazard_id)).all()
            assert len(per_hazard) == 60 and {n for _, n in per_hazard} == {1}
            assert set(s.exec(select(Hazard.tier).where(Hazard.id.in_(ids))).all()) == {"police_station"}
        assert run_sweep(db, policy, later) == []  # and again: nothing left
    finally:
        db.engine.dispose()
        cleanup()
