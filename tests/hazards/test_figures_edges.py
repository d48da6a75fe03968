"""The figures and the quarterly major-hazard list against the rows they are made of: a seeded cross-check of
every grouping, period and area, and what a review found (each failed on the code before its fix): a
dismissed major hazard exposed every quarter after, a unit both holder and copied after a reclass, a merged
duplicate counted as a second hazard found, a deadline missed then extended counted as met."""

from datetime import datetime, timedelta, timezone

from tests.conftest import login
from tests.helpers import place_of, report

CN = timezone(timedelta(hours=8))


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=CN)


def action(c, hid, who, **body):
    r = c.post(f"/api/v1/hazards/{hid}/actions", json=body, headers=login(c, who))
    assert r.status_code == 200, r.text
    return r.json()


def get(c, who, path, **params):
    r = c.get(path, params=params, headers=login(c, who))
    assert r.status_code == 200, r.text
    return r.json()


# -- quarterly major-hazard list (seed 004: 每季度集中曝光一批重大火灾隐患) --------------------------


def test_a_dismissed_major_hazard_is_not_exposed_in_every_later_quarter(clocked_client, clock, session, units):
    """A major report its holder, the brigade, dismissed (not a hazard after all) has no closed_at, so
    major_hazards_of_quarter (closed_at IS NULL) lists it in every quarter from then on."""
    c = clocked_client
    clock.now = at("2026-02-02T09:00")
    shop = place_of(session, units, "grid-a-1-1", "nine_small")
    hid = report(c, login(c, "worker-a1"), shop.id, at("2026-02-02T08:00"), severity="major",
                 category="insufficient_exits")["hazard_id"]
    clock.now = at("2026-02-03T09:00")
    action(c, hid, "brigade", action="dismiss", reason="误报：出口数量符合规范")
    clock.now = at("2026-10-10T09:00")
    for who in ("brigade", "office-a"):
        later = get(c, who, "/api/v1/reports/major-hazards", year=2026, quarter=3)
        assert hid not in [i["id"] for i in later], f"{who}: dismissed in Q1, still exposed in Q3"


# -- the cc queue ----------------------------------------------------------------------------------


def test_a_closed_hazard_handed_over_by_a_reclass_leaves_the_new_holders_cc_list(clocked_client, clock, session,
                                                                                    units):
    """_hand_over_closed (app/referrals/service.py:933) makes the unit the holder without removing the
    copy it had (act() does, for a hop): the police station then sees the hazard it holds in its cc
    list, and after a reopening in both its own queue and its cc queue."""
    c = clocked_client
    clock.now = at("2026-03-02T09:00")
    rental = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(c, login(c, "worker-a1"), rental.id, at("2026-03-02T08:00"))["hazard_id"]
    action(c, hid, "office-a", action="escalate")
    action(c, hid, "police-a", action="return", reason="不属于派出所监管")  # police-a: copied (return_from)
    action(c, hid, "office-a", action="accept")
    action(c, hid, "office-a", action="close", override_reason="当场整改")
    clock.now = at("2026-03-03T09:00")
    r = c.patch(f"/api/v1/places/{rental.id}", json={"place_class": "key_unit_3"}, headers=login(c, "office-a"))
    assert r.status_code == 200, r.text
    d = get(c, "police-a", f"/api/v1/hazards/{hid}")
    assert d["holder_org_unit_id"] == units["police-a"].id  # handed over as closed
    assert units["police-a"].id not in d["cc_org_unit_ids"]
    action(c, hid, "police-a", action="reopen", reason="复燃：又在楼道充电")
    held = [i["id"] for i in get(c, "police-a", "/api/v1/queue")["items"]]
    copied = [i["id"] for i in get(c, "police-a", "/api/v1/queue", cc="true")["items"]]
    assert hid in held
    assert hid not in copied


# -- figures, cross-checked against the rows ----------------------------------------------------------

import random  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402

from app.hazards.models import NO_DEADLINE, Hazard  # noqa: E402

UTC = timezone.utc
OPEN = ("referred", "accepted", "rectifying", "reinspection_due")


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return None if not n else (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2)


def _expected(rows, now, key):
    groups = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)

    def one(rs):
        counted = [r for r in rs if r.status not in ("dismissed", "merged")]
        closed = [r for r in counted if r.status == "closed"]
        open_ = [r for r in counted if r.status in OPEN]
        hours = [(r.closed_at - r.created_at).total_seconds() / 3600 for r in closed]
        return {"found": len(counted), "closed": len(closed), "open": len(open_),
                "overdue": sum(1 for r in open_ if r.next_due <= now),
                "cleared_by_deadline_rate": round(sum(1 for r in closed if r.deadline_met) / len(counted), 4)
                if counted else None,
                "median_hours_to_close": round(_median(hours), 2) if hours else None}
    return {k: one(v) for k, v in groups.items()}, one(rows)


@pytest.fixture
def random_hazards(session, units):
    rnd = random.Random(20261130)
    places = {g: place_of(session, units, g, "rental") for g in
              ("grid-a-1-1", "grid-a-1-2", "grid-a-2-1", "grid-b-1-1", "grid-b-2-2")}
    # instants on the edges of the periods asked below, in both zones
    edges = [at("2026-02-01T00:00"), at("2026-02-01T00:00") - timedelta(microseconds=1),
             datetime(2026, 2, 1, tzinfo=UTC), at("2026-03-01T00:00"), at("2026-04-01T00:00"),
             datetime(2026, 1, 31, 16, 0, tzinfo=UTC) + timedelta(microseconds=1)]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(160):
        grid_code = rnd.choice(list(places))
        place, t = places[grid_code], grid_code[5]
        created = rnd.choice(edges) if i % 7 == 0 else base + timedelta(seconds=rnd.randrange(120 * 86400))
        created = created.astimezone(UTC)
        status = rnd.choice(OPEN + ("closed", "closed", "dismissed", "merged"))
        tier = rnd.choice(["town_office", "police_station", "brigade"])
        holder = {"town_office": units[f"office-{t}"], "police_station": units[f"police-{t}"],
                  "brigade": units["brigade"]}[tier]
        closed_at = created + timedelta(hours=rnd.randrange(1, 900)) if status == "closed" else None
        h = Hazard(id=str(uuid.UUID(int=rnd.getrandbits(128))), place_id=place.id, category="ebike_indoor",
                   severity=rnd.choice(["general", "major"]), found_at=created, town_id=place.town_id,
                   community_id=place.community_id, grid_id=place.grid_id, place_class="rental", status=status,
                   tier=tier, holder_unit_id=holder.id, ack_due=created + timedelta(days=1),
                   next_due=(created + timedelta(days=rnd.randrange(1, 60))) if status in OPEN else NO_DEADLINE,
                   rule="r", reason_zh="r", reason_en="r", policy_version="v", created_at=created,
                   updated_at=created, closed_at=closed_at,
                   deadline_met=rnd.choice([True, False]) if status == "closed" else None)
        session.add(h)
        rows.append(h)
    session.commit()
    return rows


PERIODS = [
    ("2026-01-01T00:00:00+08:00", "2026-02-01T00:00:00+08:00"),
    ("2026-02-01T00:00:00+08:00", "2026-03-01T00:00:00+08:00"),
    ("2026-02-01T00:00:00Z", "2026-04-01T00:00:00Z"),
    ("2025-12-31T16:00:00Z", "2026-05-01T00:00:00+08:00"),
]


def test_figures_match_the_rows_for_every_grouping_period_and_area(clocked_client, clock, units, random_hazards):
    c = clocked_client
    clock.now = at("2026-03-15T12:00")
    now = clock.now
    keys = {"tier": lambda r: r.tier, "town": lambda r: r.town_id, "community": lambda r: r.community_id,
            "grid": lambda r: r.grid_id, "holder": lambda r: r.holder_unit_id}
    town_a = units["town-a"].id
    areas = {  # (who, unit_id) -> rows of that area
        ("brigade", None): lambda r: True,
        ("office-a", None): lambda r: r.town_id == town_a,
        ("police-a", None): lambda r: r.town_id == town_a,
        ("office-a", units["community-a-1"].id): lambda r: r.community_id == units["community-a-1"].id,
        ("office-a", units["grid-a-1-1"].id): lambda r: r.grid_id == units["grid-a-1-1"].id,
        ("office-a", units["brigade"].id): lambda r: r.town_id == town_a and r.holder_unit_id == units["brigade"].id,
        ("brigade", units["town-b"].id): lambda r: r.town_id == units["town-b"].id,
        ("police-a", units["county"].id): lambda r: r.town_id == town_a,
    }
    seen_found = 0
    for (who, unit_id), in_area in areas.items():
        headers = login(c, who)
        for frm, to in PERIODS:
            start, end = datetime.fromisoformat(frm.replace("Z", "+00:00")), datetime.fromisoformat(to.replace("Z", "+00:00"))
            rows = [r for r in random_hazards if in_area(r) and start <= r.created_at < end]
            for group_by, key in keys.items():
                params = {"from": frm, "to": to, "group_by": group_by, **({"unit_id": unit_id} if unit_id else {})}
                r = c.get("/api/v1/figures", params=params, headers=headers)
                assert r.status_code == 200, r.text
                got = r.json()
                want_groups, want_total = _expected(rows, now, key)
                where = (who, unit_id, frm, to, group_by)
                assert {k: v for k, v in got["total"].items() if k != "key"} == want_total, where
                assert {row["key"]: {k: v for k, v in row.items() if k != "key"} for row in got["rows"]} == want_groups, where
                seen_found += got["total"]["found"]
    assert seen_found > 1000  # not a comparison of empty sets
    for other in ("town-b", "office-b", "police-b", "community-b-1", "grid-b-1-1"):
        for who in ("office-a", "police-a"):
            r = c.get("/api/v1/figures", params={"unit_id": units[other].id}, headers=login(c, who))
            assert r.status_code == 404, (who, other, r.text)


# -- figures: scope, duplicates, deadlines ------------------------------------------------------------


def _figures(c, who, **params):
    return get(c, who, "/api/v1/figures", **{"from": "2026-03-01T00:00:00+08:00", "to": "2026-04-01T00:00:00+08:00",
                                               **params})


def test_a_merged_duplicate_is_not_a_second_hazard_found(clocked_client, clock, session, units):
    """Two reports of one hazard, the second merged into the first: one hazard was found. `found`
    counts every row (app/hazards/service.py:284) while the rate leaves merged ones out, so found,
    closed, open and the rate no longer add up (found 2, closed 1, open 0, rate 1.0)."""
    c = clocked_client
    clock.now = at("2026-03-02T09:00")
    worker = login(c, "worker-a1")
    rental = place_of(session, units, "grid-a-1-1", "rental")
    first = report(c, worker, rental.id, at("2026-03-02T08:00"))["hazard_id"]
    clock.now = at("2026-03-02T10:00")
    second = report(c, worker, rental.id, at("2026-03-02T09:30"))["hazard_id"]
    action(c, second, "office-a", action="merge", merge_into_id=first)
    action(c, first, "office-a", action="accept")
    action(c, first, "office-a", action="close", override_reason="当场整改")
    total = _figures(c, "office-a")["total"]
    assert total["closed"] == 1 and total["cleared_by_deadline_rate"] == 1.0
    assert total["found"] == 1, total


def test_a_deadline_missed_then_extended_by_the_same_holder_still_counts_as_missed(clocked_client, clock, session,
                                                                                    units):
    """隐患按期整改率: the recent fix counts a deadline missed before a hand-over as missed, but a holder who,
    after the deadline passed, records a re-inspection 'not fixed' with a new deadline overwrites both
    the state's and the hop's rectify_due (app/referrals/service.py:616, 632): closed before the new date,
    the hazard counts as cleared by its deadline."""
    c = clocked_client
    clock.now = at("2026-03-02T09:00")
    rental = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(c, login(c, "worker-a1"), rental.id, at("2026-03-02T08:00"))["hazard_id"]
    action(c, hid, "office-a", action="accept")
    action(c, hid, "office-a", action="order_rectification", deadline=at("2026-03-06T18:00").isoformat())
    clock.now = at("2026-03-09T10:00")  # the deadline has passed, the hazard is not fixed
    action(c, hid, "office-a", action="record_reinspection", rectified=False, deadline=at("2026-03-20T18:00").isoformat())
    clock.now = at("2026-03-12T10:00")
    d = action(c, hid, "office-a", action="record_reinspection", rectified=True, photos=["b" * 64])
    assert d["status"] == "closed"
    assert d["deadline_met"] is False
    assert _figures(c, "office-a")["total"]["cleared_by_deadline_rate"] == 0.0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migration_marks_hazards_handed_on_after_a_missed_deadline(backend, tmp_path):
    """Hazards stored before migration 0018: missed where a referral step ended after its deadline."""
    import sqlalchemy as sa
    from sqlmodel import Session, select

    from app import migrate
    from app.hazards.models import Hazard, Referral
    from tests.test_migrations import seeded_database

    with seeded_database(backend, tmp_path) as (url, engine):
        with Session(engine) as s:
            two = s.exec(select(Referral.hazard_id).distinct().order_by(Referral.hazard_id).limit(2)).all()
            late, on_time = (s.exec(select(Referral).where(Referral.hazard_id == h).limit(1)).one() for h in two)
            late.rectify_due, late.ended_at = at("2026-03-06T17:00"), at("2026-03-16T09:00")
            on_time.rectify_due, on_time.ended_at = at("2026-03-06T17:00"), at("2026-03-05T09:00")
            s.add_all([late, on_time])
            s.commit()
            late_id, on_time_id = late.hazard_id, on_time.hazard_id
        migrate.downgrade(url, revision="0017")
        migrate.upgrade(url)
        with Session(engine) as s:
            missed = set(s.exec(select(Hazard.id).where(Hazard.rectify_missed.is_(sa.true()))).all())
        assert missed == {late_id} and on_time_id not in missed
