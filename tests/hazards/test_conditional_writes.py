"""No lost updates at the desk: a hazard's ETag, If-Match on its actions (412 when someone acted since),
If-None-Match on its GET (304 while the answer is the same)."""

import pytest
from fastapi import Response
from sqlmodel import Session

from app.audit.service import Actor
from app.errors import PreconditionFailed
from app.hazards.models import Hazard
from app.hazards.router import post_action
from app.hazards.schemas import ActionRequest
from app.referrals.lifecycle import Action, ActionParams
from app.referrals.service import act, lock_hazard
from tests.conftest import login
from tests.hazards.test_actions import at, hazard  # noqa: F401  (hazard: a fixture)
from tests.places.test_conditional_writes import admins_desk, second_desk_behind
from tests.referrals.test_relocation import NOW
from tests.referrals.test_relocation_races import pg  # noqa: F401  (fixture: a fresh PostgreSQL, two writers)


def get(c, hid, who="office-a", **headers):
    return c.get(f"/api/v1/hazards/{hid}", headers={**login(c, who), **headers})


def act_on(c, hid, who="office-a", if_match=None, **body):
    extra = {} if if_match is None else {"If-Match": if_match}
    return c.post(f"/api/v1/hazards/{hid}/actions", json=body, headers={**login(c, who), **extra})


def as_seen(c, hid) -> tuple:
    d = get(c, hid).json()
    return d["version"], d["status"], d["holder_org_unit_id"], len(d["timeline"])


def test_the_etag_names_the_version_and_changes_with_an_action(clocked_client, hazard):
    c = clocked_client
    first = get(c, hazard)
    assert first.json()["version"] == 1
    assert first.headers["ETag"].startswith('"h-1.')
    r = act_on(c, hazard, action="accept")
    assert r.status_code == 200 and r.json()["version"] == 2
    assert r.headers["ETag"].startswith('"h-2.') and r.headers["ETag"] != first.headers["ETag"]
    assert get(c, hazard).headers["ETag"] == r.headers["ETag"]  # the action's answer is the hazard as a GET gives it


def test_a_stale_if_match_is_412_and_changes_nothing(clocked_client, hazard, units):
    c = clocked_client
    seen = get(c, hazard).headers["ETag"]
    assert act_on(c, hazard, action="accept").status_code == 200  # another desk, meanwhile
    before = as_seen(c, hazard)
    r = act_on(c, hazard, if_match=seen, action="escalate", reason="需派出所处理")
    assert r.status_code == 412
    err = r.json()["error"]
    assert err["code"] == "precondition_failed" and err["current_version"] == 2 and "version 2" in err["message"]
    assert r.headers["ETag"] == get(c, hazard).headers["ETag"]
    assert as_seen(c, hazard) == before == (2, "accepted", units["office-a"].id, before[3])


def test_the_current_etag_or_its_version_alone_lets_the_action_through(clocked_client, hazard):
    c = clocked_client
    r = act_on(c, hazard, if_match=get(c, hazard).headers["ETag"], action="accept")
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    # "h-<version>" as a script makes it from the body's version, in a list with an older one
    r = act_on(c, hazard, if_match=f'"h-1", "h-{r.json()["version"]}"', action="order_rectification")
    assert r.status_code == 200 and r.json()["status"] == "rectifying" and r.json()["version"] == 3


def test_if_match_star_matches_any_version(clocked_client, hazard):
    c = clocked_client
    act_on(c, hazard, action="accept")
    r = act_on(c, hazard, if_match="*", action="order_rectification")
    assert r.status_code == 200 and r.json()["status"] == "rectifying"


@pytest.mark.parametrize("value", ["h-1", '"h-1', '"p-1"', '"1"', '"h-one"', '"h-1" "h-2"', ",", '*, "h-1"'],
                         ids=["unquoted", "unclosed", "a-premises-tag", "bare-number", "no-number", "no-comma",
                              "no-tag", "star-in-a-list"])
def test_a_malformed_if_match_is_422_naming_the_header(clocked_client, hazard, value):
    c = clocked_client
    before = as_seen(c, hazard)
    r = act_on(c, hazard, if_match=value, action="accept")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "If-Match" and "If-Match" in r.json()["error"]["message"]
    assert as_seen(c, hazard) == before


def test_a_weak_etag_names_its_version(clocked_client, hazard):
    """A proxy compressing the answers (nginx's gzip) weakens the ETag the desk then sends back: its version still
    counts (app/conditional.py), stale or current. Refused as malformed, that desk could never act."""
    c = clocked_client
    etag = get(c, hazard).headers["ETag"]
    assert act_on(c, hazard, if_match=f"W/{etag}", action="accept").status_code == 200
    r = act_on(c, hazard, if_match=f"W/{etag}", action="order_rectification", deadline=at("2026-03-20T17:00").isoformat())
    assert r.status_code == 412 and r.json()["error"]["code"] == "precondition_failed", r.text


def test_a_star_in_a_list_is_no_if_none_match_star(clocked_client, hazard):
    """`*` is If-None-Match's value alone (RFC 9110 §13.1.2): in a list it is no tag, and matches nothing."""
    c = clocked_client
    r = get(c, hazard, **{"If-None-Match": '"h-0.0", *'})
    assert r.status_code == 200 and r.json()["id"] == hazard


def test_if_none_match_is_304_while_the_answer_is_the_same(clocked_client, hazard):
    c = clocked_client
    etag = get(c, hazard).headers["ETag"]
    for sent in (etag, f"W/{etag}", f'"h-9.0", {etag}', "*"):
        r = get(c, hazard, **{"If-None-Match": sent})
        assert (r.status_code, r.headers["ETag"], r.content) == (304, etag, b""), sent
    act_on(c, hazard, action="accept")
    r = get(c, hazard, **{"If-None-Match": etag})
    assert r.status_code == 200 and r.json()["status"] == "accepted" and r.headers["ETag"] != etag


def test_a_deadline_passing_changes_the_etag_though_no_one_wrote(clocked_client, clock, hazard):
    """A tag of the version alone would answer a desk polling past the deadline with 304: "not overdue"."""
    c = clocked_client
    fresh = get(c, hazard)
    assert fresh.json()["overdue"] is False
    clock.now = at("2026-03-10T09:00")  # the day to acknowledge it has long passed
    r = get(c, hazard, **{"If-None-Match": fresh.headers["ETag"]})
    assert r.status_code == 200 and r.json()["overdue"] is True and r.json()["version"] == 1
    # If-Match asks whether anyone acted, which no one did
    assert act_on(c, hazard, if_match=fresh.headers["ETag"], action="accept").status_code == 200


def test_a_hazard_out_of_sight_stays_404_and_one_not_the_callers_to_act_on_403(clocked_client, hazard):
    c = clocked_client
    act_on(c, hazard, action="accept")
    stale = '"h-1"'
    assert act_on(c, hazard, "office-b", if_match=stale, action="escalate").status_code == 404  # other town
    assert get(c, hazard, "office-b", **{"If-None-Match": "*"}).status_code == 404
    assert act_on(c, hazard, "police-a", if_match=stale, action="escalate").status_code == 403  # sees it, no holder


def test_the_openapi_document_shows_the_headers_and_the_412(client):
    paths = client.get("/openapi.json").json()["paths"]
    post = paths["/api/v1/hazards/{hazard_id}/actions"]["post"]
    assert "412" in post["responses"] and "ETag" in post["responses"]["412"]["headers"]
    assert "if-match" in {p["name"].lower() for p in post["parameters"] if p["in"] == "header"}
    get_ = paths["/api/v1/hazards/{hazard_id}"]["get"]
    assert "304" in get_["responses"] and "ETag" in get_["responses"]["200"]["headers"]
    assert "if-none-match" in {p["name"].lower() for p in get_["parameters"] if p["in"] == "header"}


def test_two_desks_acting_on_one_version_at_once_cannot_both_pass(pg):
    """PostgreSQL, where writers run side by side: the first desk's accept holds the row, uncommitted; the
    second, sent with the same If-Match, must compare it with the version the first one leaves."""
    hid = pg.report()
    held = pg.session()
    h = lock_hazard(held, hid)
    seen = f'"h-{h.version}"'
    act(held, pg.rules, h, Action.ACCEPT, ActionParams(), Actor.system(), NOW)
    held.flush()
    writer = pg.session()
    desk = admins_desk(writer)
    out = second_desk_behind(pg, held, writer, lambda: post_action(
        hid, ActionRequest(action="escalate", reason="需派出所处理"), desk, writer, NOW, pg.rules, Response(),
        if_match=[seen]))
    assert isinstance(out, PreconditionFailed) and out.extra["current_version"] == 2, out
    with Session(pg.engine) as s:
        assert s.get(Hazard, hid).status == "accepted"


def test_a_malformed_if_match_does_not_outrank_the_hazards_404_or_403(clocked_client, hazard):
    """(Failed before its fix, a review.) post_action parses If-Match (versions_named) before it looks the hazard up, so a caller who may not see
    the hazard (office-b, another town) gets 422 naming If-Match instead of the 404 every other request about
    it gets, and a caller who sees it but may not act (police-a) gets 422 instead of 403. The README promises
    "a record the caller may not see is still 404, and an action its role may not take still 403, whatever
    the headers say"; a client fixing its header after the 422 would only then learn the hazard is not its.
    Fix: parse the header after visible_hazard / require_may_act (keep the parsed value for the compare)."""
    c = clocked_client
    before = as_seen(c, hazard)
    r = act_on(c, hazard, "office-b", if_match='"h-one"', action="accept")
    assert r.status_code == 404, r.text
    r = act_on(c, hazard, "police-a", if_match='"h-one"', action="escalate", reason="需派出所处理")
    assert r.status_code == 403, r.text
    assert as_seen(c, hazard) == before
