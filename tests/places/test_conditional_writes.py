"""No lost updates at the desk: a premises' ETag, If-Match on its PATCH (412 when someone changed it since),
If-None-Match on its GET (304 while it is the same)."""

import pytest
from fastapi import Response
from sqlmodel import Session, select

from app.auth.deps import Principal
from app.auth.models import Device, User
from app.errors import PreconditionFailed
from app.places.models import Place, PlaceUpdate
from app.places.router import update_place as patch_place
from app.places.service import update_place
from tests.conftest import login
from tests.helpers import place_of, race_behind_lock
from tests.referrals.test_relocation import NOW
from tests.referrals.test_relocation_races import pg  # noqa: F401  (fixture: a fresh PostgreSQL, two writers)


@pytest.fixture
def place_id(session, units) -> str:
    return place_of(session, units, "grid-a-1-1", "rental").id


def get(c, pid, who="office-a", **headers):
    return c.get(f"/api/v1/places/{pid}", headers={**login(c, who), **headers})


def patch(c, pid, who="office-a", if_match=None, **body):
    extra = {} if if_match is None else {"If-Match": if_match}
    return c.patch(f"/api/v1/places/{pid}", json=body, headers={**login(c, who), **extra})


def test_the_etag_is_the_version_and_changes_with_a_patch(client, place_id):
    first = get(client, place_id)
    assert first.headers["ETag"] == f'"p-{first.json()["version"]}"'
    r = patch(client, place_id, owner_phone="13900000001")
    assert r.status_code == 200 and r.json()["version"] == first.json()["version"] + 1
    assert r.headers["ETag"] == f'"p-{r.json()["version"]}"' == get(client, place_id).headers["ETag"]


def test_a_stale_if_match_is_412_and_leaves_the_premises_as_it_was(client, place_id):
    seen = get(client, place_id).headers["ETag"]
    assert patch(client, place_id, owner_phone="13900000001").status_code == 200  # another desk, meanwhile
    before = get(client, place_id).json()
    r = patch(client, place_id, if_match=seen, owner_phone="13900000002", name="改名的店")
    assert r.status_code == 412
    err = r.json()["error"]
    assert err["code"] == "precondition_failed" and err["current_version"] == before["version"]
    assert f"version {before['version']}" in err["message"]
    assert r.headers["ETag"] == f'"p-{before["version"]}"'
    assert get(client, place_id).json() == before


def test_the_current_etag_or_star_lets_the_patch_through(client, place_id):
    r = patch(client, place_id, if_match=get(client, place_id).headers["ETag"], owner_phone="13900000003")
    assert r.status_code == 200 and r.json()["owner_phone"] == "13900000003"
    r = patch(client, place_id, if_match="*", owner_phone="13900000004")
    assert r.status_code == 200 and r.json()["owner_phone"] == "13900000004"


@pytest.mark.parametrize("value", ["3", '"h-1"', 'W/"h-1"', '"p-"'])
def test_a_malformed_if_match_is_422_naming_the_header(client, place_id, value):
    before = get(client, place_id).json()
    r = patch(client, place_id, if_match=value, owner_phone="13900000005")
    assert r.status_code == 422 and r.json()["error"]["field"] == "If-Match", r.text
    assert get(client, place_id).json() == before


def test_if_none_match_is_304_until_the_premises_changes(client, place_id):
    etag = get(client, place_id).headers["ETag"]
    r = get(client, place_id, **{"If-None-Match": etag})
    assert (r.status_code, r.headers["ETag"], r.content) == (304, etag, b"")
    patch(client, place_id, owner_phone="13900000006")
    r = get(client, place_id, **{"If-None-Match": etag})
    assert r.status_code == 200 and r.json()["owner_phone"] == "13900000006"


def test_premises_out_of_sight_stay_404_whatever_the_if_match(client, place_id):
    assert patch(client, place_id, "office-b", if_match='"p-0"', owner_phone="13900000007").status_code == 404


def test_the_openapi_document_shows_the_412(client):
    patch_ = client.get("/openapi.json").json()["paths"]["/api/v1/places/{place_id}"]["patch"]
    assert "412" in patch_["responses"] and "ETag" in patch_["responses"]["200"]["headers"]


def admins_desk(session: Session) -> Principal:
    """The admin acting at a desk, on the race fixture's device (tests/referrals/test_relocation_races.py)."""
    admin = session.exec(select(User).where(User.username == "admin")).one()
    device = session.exec(select(Device).where(Device.device_key == "race-phone")).one()
    return Principal(user=admin, device=device, token=None, session=session)


def second_desk_behind(pg, held: Session, writer: Session, write) -> object:
    """``write()`` on ``writer`` while ``held`` holds the row (race_behind_lock): what it returned, or the
    PreconditionFailed it raised; both sessions closed after."""
    def attempt():
        try:
            return write()
        except PreconditionFailed as exc:
            return exc

    try:
        return race_behind_lock(pg.engine, held, writer, attempt)
    finally:
        held.close()
        writer.close()


def test_two_desks_changing_one_version_at_once_cannot_both_pass(pg):
    """PostgreSQL: the first change holds the premises, uncommitted; the second, sent with the same If-Match,
    must be compared with the version the first one leaves, not the one it read before the lock."""
    held = pg.session()
    place = held.get(Place, pg.place_id)
    seen = f'"p-{place.version}"'
    update_place(held, None, place, PlaceUpdate(owner_phone="13900000008"), rules=pg.rules, now=NOW)
    held.flush()
    writer = pg.session()
    desk = admins_desk(writer)
    out = second_desk_behind(pg, held, writer, lambda: patch_place(
        pg.place_id, PlaceUpdate(owner_phone="13900000009"), desk, writer, NOW, pg.rules, Response(), if_match=[seen]))
    assert isinstance(out, PreconditionFailed), out
    with Session(pg.engine) as s:
        assert s.get(Place, pg.place_id).owner_phone == "13900000008"


def test_a_malformed_if_match_does_not_outrank_the_premises_404(client, place_id):
    """(Failed before its fix, a review.) PATCH /places/{id} parses If-Match before visible_place: a premises outside the caller's jurisdiction
    answers 422 naming If-Match rather than 404 ("a record the caller may not see is still 404 ... whatever
    the headers say"). Fix: call versions_named after visible_place."""
    r = patch(client, place_id, "office-b", if_match="p-1", owner_phone="13900000007")
    assert r.status_code == 404, r.text


def test_a_stale_if_match_does_not_outrank_the_premises_403(client, place_id):
    """(Failed before its fix, a review.) A police station may change a premises' class only. With a stale If-Match it is told 412 "read it again
    before you change it"; read again and re-sent, the same edit is a 403. update_place compares the version
    right after the lock, before scope.require_place_editor, while post_action (hazards) checks the role first
    and the README says an action the role may not take is "still 403, whatever the headers say". Fix: compare
    if_version after require_place_editor / _may_reclass (still on the locked row, before any write)."""
    seen = get(client, place_id).headers["ETag"]
    assert patch(client, place_id, owner_phone="13900000001").status_code == 200  # another desk, meanwhile
    r = patch(client, place_id, "police-a", if_match=seen, name="改名的店")
    assert r.status_code == 403, r.text
    r = patch(client, place_id, "police-a", if_match="garbage", name="改名的店")  # an operator's walkthrough
    assert r.status_code == 403, r.text


def test_if_match_sent_on_two_header_lines_is_one_list(client, place_id):
    """(Failed before its fix, a review.) RFC 9110 §5.3: a field sent on several lines means the same as one line listing them all. FastAPI's
    Header(str) reads only the first line, so `If-Match: "p-1"` + `If-Match: "p-2"` on a premises at version 2
    is a 412, though one of the tags it names is current (proxies and HTTP libraries do split lists this way).
    Fix: read request.headers.getlist("If-Match") and join with ", " before versions_named."""
    assert patch(client, place_id, owner_phone="13900000001").status_code == 200
    v = get(client, place_id).json()["version"]
    r = client.patch(f"/api/v1/places/{place_id}", json={"owner_phone": "13900000002"},
                     headers=[*login(client, "office-a").items(), ("If-Match", f'"p-{v - 1}"'),
                              ("If-Match", f'"p-{v}"')])
    assert r.status_code == 200, r.text
    assert r.json()["owner_phone"] == "13900000002"


def test_if_none_match_sent_on_two_header_lines_is_one_list(client, place_id):
    """(Failed before its fix, a review.) As If-Match: only the first If-None-Match line is read, so a client sending the current ETag on a second
    line gets the whole body (200) instead of 304. Fix: join request.headers.getlist("If-None-Match")."""
    h = login(client, "office-a")
    etag = get(client, place_id).headers["ETag"]
    r = client.get(f"/api/v1/places/{place_id}",
                   headers=[*h.items(), ("If-None-Match", '"p-0"'), ("If-None-Match", etag)])
    assert (r.status_code, r.headers.get("ETag")) == (304, etag)


def test_if_match_with_an_empty_list_element_is_read_not_refused(client, place_id):
    """(Failed before its fix, a review.) RFC 9110 §5.6.1.2: a recipient MUST accept (parse and ignore) empty list elements, e.g. `"p-1", ` or
    `, "p-1"` (what a client joining tags or header lines naively sends). versions_named requires a tag after
    every comma and before the first, so both are 422 naming If-Match although they name the current version.
    Fix: skip empty elements (optional whitespace between commas) in versions_named's loop."""
    v = get(client, place_id).json()["version"]
    r = patch(client, place_id, if_match=f'"p-{v}", ', owner_phone="13900000003")
    assert r.status_code == 200, r.text
    r = patch(client, place_id, if_match=f', "p-{r.json()["version"]}"', owner_phone="13900000004")
    assert r.status_code == 200, r.text
