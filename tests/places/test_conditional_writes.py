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


@pytest.mark.parametrize("value", ["3", '"h-1"', 'W/"p-1"', '"p-"'])
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


def test_two_desks_changing_one_version_at_once_cannot_both_pass(pg):
    """PostgreSQL: the first change holds the premises, uncommitted; the second, sent with the same If-Match,
    must be compared with the version the first one leaves, not the one it read before the lock."""
    held = pg.session()
    place = held.get(Place, pg.place_id)
    seen = f'"p-{place.version}"'
    update_place(held, None, place, PlaceUpdate(owner_phone="13900000008"), rules=pg.rules, now=NOW)
    held.flush()
    writer = pg.session()
    admin = writer.exec(select(User).where(User.username == "admin")).one()
    device = writer.exec(select(Device).where(Device.device_key == "race-phone")).one()
    desk = Principal(user=admin, device=device, token=None, session=writer)

    def second_desk():
        try:
            return patch_place(pg.place_id, PlaceUpdate(owner_phone="13900000009"), desk, writer, NOW, pg.rules,
                               Response(), if_match=seen)
        except PreconditionFailed as exc:
            return exc

    try:
        out = race_behind_lock(pg.engine, held, writer, second_desk)
    finally:
        held.close()
        writer.close()
    assert isinstance(out, PreconditionFailed), out
    with Session(pg.engine) as s:
        assert s.get(Place, pg.place_id).owner_phone == "13900000008"
