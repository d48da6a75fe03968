"""The referral lifecycle driven through the desk actions and the sweep (both backends): seeded random walks of
actions by every kind of actor, with sweeps across months of the calendar, checking after each step that the
hazard has one accountable holder, clocks that run as its status says, hops that say why, copies that agree,
and an audit chain that verifies; then what those walks found, each test failing on the code before its fix."""

import random
import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select

from app.audit.service import verify_all
from app.hazards.models import NO_DEADLINE, Hazard, HazardCC, Referral
from app.org.models import OrgUnit, UnitKind
from app.org.service import create_unit
from app.referrals.lifecycle import Status
from app.referrals.policy import load_policy
from app.referrals.service import OPEN_STATUSES, TIER_KIND
from app.referrals.sweeper import run_sweep
from tests.conftest import login
from tests.helpers import place_of, report

CN = timezone(timedelta(hours=8))


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=CN)


class Desk:
    """Logs in once per user (password hashing is slow) and posts actions."""

    def __init__(self, client):
        self.c = client
        self.headers: dict[str, dict] = {}

    def h(self, who):
        if who not in self.headers:
            self.headers[who] = login(self.c, who)
        return self.headers[who]

    def act(self, hid, who, **body):
        return self.c.post(f"/api/v1/hazards/{hid}/actions", json=body, headers=self.h(who))

    def get(self, hid, who="admin"):
        return self.c.get(f"/api/v1/hazards/{hid}", headers=self.h(who)).json()


@pytest.fixture
def desk(clocked_client):
    return Desk(clocked_client)


@pytest.fixture
def hazard(clocked_client, clock, session, units, desk):
    """A general hazard in a rental house of town A, held by office-a."""
    clock.now = at("2026-03-02T09:00")
    place = place_of(session, units, "grid-a-1-1", "rental")
    res = report(clocked_client, desk.h("worker-a1"), place.id, at("2026-03-02T08:00"))
    assert res["holder_org_unit_id"] == units["office-a"].id
    return res["hazard_id"]


def check_invariants(session, hazard_id: str) -> list[str]:
    """What must hold of a hazard after any action or sweep."""
    session.expire_all()
    h = session.get(Hazard, hazard_id)
    out = []
    holder = session.get(OrgUnit, h.holder_unit_id)
    if holder is None:
        return [f"holder {h.holder_unit_id} does not exist"]
    if holder.kind != TIER_KIND[h.tier]:
        out.append(f"holder kind {holder.kind} does not match tier {h.tier}")
    town = session.get(OrgUnit, h.town_id)
    if holder.county_id != town.county_id:
        out.append("holder outside the premises' county")
    if h.previous_holder_unit_id is not None and h.previous_holder_unit_id == h.holder_unit_id:
        out.append("previous holder is the holder")
    status = Status(h.status)
    is_open = status in OPEN_STATUSES
    running = {"referred": ["ack_due"], "accepted": ["order_due"], "rectifying": ["rectify_due", "reinspect_due"],
               "reinspection_due": ["reinspect_due"]}.get(h.status, [])
    for f in running:
        if getattr(h, f) is None:
            out.append(f"{h.status} without {f}")
    if is_open and h.next_due == NO_DEADLINE:
        out.append("open without a running clock")
    if not is_open and (h.next_due != NO_DEADLINE or h.escalate_at is not None):
        out.append(f"{h.status} with a running clock")
    if is_open and h.escalate_at is None and not (h.tier == "brigade" and h.listed_supervision):
        out.append("open hazard the sweep will never look at")
    hops = session.exec(select(Referral).where(Referral.hazard_id == h.id).order_by(Referral.seq)).all()
    if [r.seq for r in hops] != list(range(1, len(hops) + 1)):
        out.append(f"hop seqs {[r.seq for r in hops]}")
    if hops[-1].to_unit_id != h.holder_unit_id:
        out.append("current hop is not to the holder")
    if hops[-1].tier != h.tier:
        out.append(f"current hop's tier {hops[-1].tier} is not the hazard's {h.tier}")
    if is_open and hops[-1].ended_at is not None:
        out.append("open hazard's current hop has ended")
    if sum(1 for r in hops if r.ended_at is None) > (1 if is_open else 0):
        out.append("more than one hop running")
    cur = hops[-1]
    if is_open:  # the current hop carries the holder's clocks as they run (retime_clocks keeps it so)
        for f in ("ack_due", "order_due", "rectify_due", "reinspect_due"):
            if f in running and getattr(cur, f) != getattr(h, f):
                out.append(f"hop {cur.seq} says {f} {getattr(cur, f)}, the hazard {getattr(h, f)}")
        if h.status == "referred" and (cur.rectify_due or cur.reinspect_due):
            out.append(f"hop {cur.seq} of a referred hazard still shows an old rectification order's clocks")
    for r in hops:
        if not (r.rule or r.reason):
            out.append(f"hop {r.seq} ({r.via}) says neither rule nor reason")
    ccs = session.exec(select(HazardCC).where(HazardCC.hazard_id == h.id)).all()
    for cc in ccs:
        if cc.is_open != is_open or cc.next_due != h.next_due:
            out.append(f"cc {cc.unit_id} out of step")
        if cc.unit_id == h.holder_unit_id:
            out.append(f"the holder is also copied ({cc.reason})")
    if status is Status.MERGED:
        target = session.get(Hazard, h.merged_into_id) if h.merged_into_id else None
        if target is None:
            out.append("merged into nothing")
    return out


def chain_problems(session) -> list:
    return [p for p in verify_all(session) if not isinstance(p, int)]


ACTORS = ["office-a", "police-a", "brigade", "office-b", "police-b", "worker-a1", "worker-b1", "admin"]
ACTIONS = ["accept", "order_rectification", "escalate", "transfer", "return", "dismiss", "record_reinspection",
           "close", "reopen", "merge", "owner_reported_fixed"]


def random_body(rng, action, units, now, other_hazards, other_county):
    body = {"action": action}
    if rng.random() < 0.8:
        body["reason"] = rng.choice(["原因", "  ", "不属于本单位"])
    if action == "transfer":
        body["to_unit_id"] = rng.choice([units[c].id for c in ("office-a", "office-b", "police-a", "police-b",
                                                                "brigade", "grid-a-1-1")]
                                        + [other_county["office"].id, other_county["police"].id, "nope"])
    if action in ("order_rectification", "record_reinspection") and rng.random() < 0.6:
        days = rng.choice([-3, 0, 1, 5, 40, 400, 365 * 3000])
        try:
            body["deadline"] = (now + timedelta(days=days, hours=rng.randint(0, 23))).astimezone(CN).isoformat()
        except OverflowError:
            body["deadline"] = "9999-12-30T23:00:00+08:00"
    if action == "record_reinspection":
        body["rectified"] = rng.choice([True, False, None])
        if rng.random() < 0.5:
            body["photos"] = [rng.choice("abcdef") * 64]
    if action == "close" and rng.random() < 0.6:
        body["override_reason"] = "现场确认"
    if action == "merge":
        body["merge_into_id"] = rng.choice(other_hazards)
    return body


@pytest.fixture
def other_county(session):
    county = create_unit(session, code="county-r", name="邻区", kind=UnitKind.county, parent=None)
    town = create_unit(session, code="town-r", name="邻镇", kind=UnitKind.town, parent=county)
    out = {
        "brigade": create_unit(session, code="brigade-r", name="邻区消防救援大队", kind=UnitKind.brigade, parent=county),
        "office": create_unit(session, code="office-r", name="邻镇办", kind=UnitKind.town_office, parent=town),
        "police": create_unit(session, code="police-r", name="邻镇派出所", kind=UnitKind.police_station, parent=town),
    }
    session.commit()
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_walk_keeps_one_accountable_holder(db, session, units, clocked_client, clock, desk, other_county, seed):
    rng = random.Random(seed)
    c = clocked_client
    clock.now = at("2026-03-02T09:00")
    places = [place_of(session, units, "grid-a-1-1", "rental"), place_of(session, units, "grid-a-1-1", "nine_small")]
    hazards = []
    for i in range(4):
        p = places[i % 2]
        res = report(c, desk.h("worker-a1"), p.id, clock.now - timedelta(hours=1),
                     category=rng.choice(["ebike_indoor", "window_bars", "blocked_exit"]),
                     severity=rng.choice(["general", "general", "major"]), violation=rng.random() < 0.3)
        hazards.append(res["hazard_id"])
    policy = load_policy()
    problems = []
    for step in range(120):
        if rng.random() < 0.12:
            clock.now += timedelta(days=rng.choice([1, 2, 3, 7, 30, 200]), hours=rng.randint(0, 23))
            run_sweep(db, policy, clock.now)
            for hid in hazards:
                problems += [(step, "sweep", hid, p) for p in check_invariants(session, hid)]
            continue
        hid = rng.choice(hazards)
        action = rng.choice(ACTIONS)
        who = rng.choice(ACTORS)
        if rng.random() < 0.6:  # mostly the holder, so the walk gets somewhere
            holder = session.get(OrgUnit, session.get(Hazard, hid).holder_unit_id).code
            who = {"office-a": "office-a", "office-b": "office-b", "police-a": "police-a", "police-b": "police-b",
                   "brigade": "brigade"}.get(holder, "admin")
        body = random_body(rng, action, units, clock.now, hazards, other_county)
        r = desk.act(hid, who, **body)
        if r.status_code >= 500:
            problems.append((step, who, body, r.status_code, r.text[:300]))
        for p in check_invariants(session, hid):
            problems.append((step, who, body, r.status_code, p))
        clock.now += timedelta(minutes=rng.randint(1, 600))
    problems += [("chain", p) for p in chain_problems(session)]
    first: dict[str, tuple] = {}  # the first step that showed each kind of problem
    for p in problems:
        first.setdefault(re.sub(r"[0-9a-f-]{36}|\d{4}-\d\d-\d\d[ T][\d:+]+|\d+", "#", str(p[-1])), p)
    assert not problems, "\n".join(map(str, first.values()))


# -- findings ------------------------------------------------------------------------------------


def test_a_hazard_returned_to_a_unit_is_not_also_copied_to_it(desk, hazard, units, session):
    """HazardCC: "a unit copied on a hazard: sees it, is NOT its holder" (routing never copies the holder,
    relocate() drops such a copy). A return (or a transfer or escalation back) to a unit that passed the hazard
    on before left its `escalate_from` copy in place: the holder is its own copy, and the hazard shows in the
    unit's own cc queue as well as in its queue."""
    assert desk.act(hazard, "office-a", action="escalate", reason="需派出所处理").status_code == 200
    r = desk.act(hazard, "police-a", action="return", reason="不属于派出所监管范围")
    assert r.status_code == 200 and r.json()["holder_org_unit_id"] == units["office-a"].id
    assert units["office-a"].id not in r.json()["cc_org_unit_ids"]
    cc_queue = desk.c.get("/api/v1/queue", params={"cc": "true"}, headers=desk.h("office-a")).json()["items"]
    assert hazard not in [i["id"] for i in cc_queue]
    assert session.get(HazardCC, (hazard, units["office-a"].id)) is None


def test_the_hop_shows_the_recheck_clock_the_owners_report_started(desk, hazard, clock):
    """The current referral hop is the ledger's copy of the holder's clocks (retime_clocks keeps it in step).
    After the owner reports the fix early, the 复查 clock runs 3 working days from that report, but the
    hop still says 3 working days after the rectification deadline (here two weeks later)."""
    desk.act(hazard, "office-a", action="accept")
    desk.act(hazard, "office-a", action="order_rectification", deadline="2026-03-20T18:00:00+08:00")
    clock.now = at("2026-03-04T10:00")
    d = desk.act(hazard, "office-a", action="owner_reported_fixed").json()
    assert d["clocks"]["reinspect"]["due"] == "2026-03-09T16:00:00Z"
    assert d["referrals"][-1]["reinspect_due"] == d["clocks"]["reinspect"]["due"]


def test_a_reopened_hazards_hop_does_not_keep_the_old_orders_clocks(desk, hazard, clock):
    """Reopened: referred, only the ack clock runs; the hop still shows the closed order's deadline and
    复查 date as if they ran."""
    desk.act(hazard, "office-a", action="accept")
    desk.act(hazard, "office-a", action="order_rectification", deadline="2026-03-20T18:00:00+08:00")
    clock.now = at("2026-03-05T10:00")
    desk.act(hazard, "office-a", action="close", override_reason="现场确认已整改")
    d = desk.act(hazard, "office-a", action="reopen", reason="复核发现仍存在").json()
    assert set(d["clocks"]) == {"ack"}
    hop = d["referrals"][-1]
    assert (hop["rectify_due"], hop["reinspect_due"]) == (None, None), hop


def test_a_deadline_missed_before_an_escalation_is_not_counted_as_met(db, desk, hazard, clock):
    """隐患清零率 counts hazards closed by their rectification deadline (deadline_met). The owner misses the
    deadline, the 复查 clock runs out and the sweep escalates to the police; the escalation clears
    rectify_due, so the police's close weeks later records deadline_met = True."""
    desk.act(hazard, "office-a", action="accept")
    desk.act(hazard, "office-a", action="order_rectification", deadline="2026-03-06T18:00:00+08:00")
    clock.now = at("2026-03-16T10:00")
    [esc] = run_sweep(db, load_policy(), clock.now)
    assert esc.hazard_id == hazard and esc.to_tier == "police_station"
    desk.act(hazard, "police-a", action="accept")
    d = desk.act(hazard, "police-a", action="close", override_reason="终于整改").json()
    assert d["status"] == "closed"
    assert d["deadline_met"] is False


def test_a_desk_escalation_says_why_on_its_hop(desk, hazard):
    """Every hop must say why the hazard went there. The sweep's escalation gives a reason, a transfer or
    a return must; a holder's escalation without one makes a hop with neither rule nor reason."""
    r = desk.act(hazard, "office-a", action="escalate")
    assert r.status_code == 200, r.text
    hop = r.json()["referrals"][-1]
    assert hop["via"] == "escalate" and "escalated by its holder" in hop["reason"], hop
