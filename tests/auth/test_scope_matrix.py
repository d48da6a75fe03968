"""Every role against premises inside and outside its jurisdiction: 404 outside, 403 for seen-but-not-allowed."""

import pytest
from sqlmodel import select

from app.places.models import Place
from tests.conftest import login

# Premises by where they sit: worker-a1's own grid, another community of town A, town B.
SPOTS = {"own_grid": "grid-a-1-1", "town_a_other": "grid-a-2-2", "town_b": "grid-b-2-1"}

# (user, spot) -> expected status for GET and PATCH. Written out by hand from DOMAIN.md, not derived.
MATRIX = {
    #  user           own_grid    town_a_other  town_b
    "worker-a1":    {"own_grid": (200, 200), "town_a_other": (404, 404), "town_b": (404, 404)},
    "worker-b1":    {"own_grid": (404, 404), "town_a_other": (404, 404), "town_b": (404, 404)},
    "office-a":     {"own_grid": (200, 200), "town_a_other": (200, 200), "town_b": (404, 404)},
    "office-b":     {"own_grid": (404, 404), "town_a_other": (404, 404), "town_b": (200, 200)},
    "police-a":     {"own_grid": (200, 403), "town_a_other": (200, 403), "town_b": (404, 404)},
    "police-b":     {"own_grid": (404, 404), "town_a_other": (404, 404), "town_b": (200, 403)},
    "brigade":      {"own_grid": (200, 403), "town_a_other": (200, 403), "town_b": (200, 403)},
    "admin":        {"own_grid": (200, 200), "town_a_other": (200, 200), "town_b": (200, 200)},
}


@pytest.fixture
def spot_places(session, units) -> dict[str, str]:
    out = {}
    for spot, grid_code in SPOTS.items():
        out[spot] = session.exec(select(Place.id).where(Place.grid_id == units[grid_code].id).order_by(Place.id)).first()
        assert out[spot], f"demo data has no premises in {grid_code}"
    return out


@pytest.mark.parametrize("user", sorted(MATRIX))
def test_place_matrix(client, spot_places, user):
    h = login(client, user)
    for spot, (want_get, want_patch) in MATRIX[user].items():
        pid = spot_places[spot]
        got = client.get(f"/api/v1/places/{pid}", headers=h)
        assert got.status_code == want_get, (user, spot, "GET", got.text)
        patched = client.patch(f"/api/v1/places/{pid}", json={"owner_phone": "13800000000"}, headers=h)
        assert patched.status_code == want_patch, (user, spot, "PATCH", patched.text)
        if want_patch != 200:
            again = client.get(f"/api/v1/places/{pid}", headers=login(client, "admin"))
            assert again.json()["owner_phone"] != "13800000000", "a refused change must not be applied"


# Which grids' premises each user lists: by grid code, written out by hand.
LIST_SCOPE = {
    "worker-a1": {"grid-a-1-1"},
    "worker-a2": {"grid-a-2-1"},
    "office-a": {"grid-a-1-1", "grid-a-1-2", "grid-a-2-1", "grid-a-2-2"},
    "police-b": {"grid-b-1-1", "grid-b-1-2", "grid-b-2-1", "grid-b-2-2"},
    "brigade": {f"grid-{t}-{c}-{g}" for t in "ab" for c in "12" for g in "12"},
}


@pytest.mark.parametrize("user", sorted(LIST_SCOPE))
def test_list_places_is_exactly_the_scope(client, session, units, user):
    h = login(client, user)
    seen, cursor = [], None
    while True:
        r = client.get("/api/v1/places", params={"limit": 7, **({"cursor": cursor} if cursor else {})}, headers=h)
        assert r.status_code == 200
        seen += [p["id"] for p in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    grid_ids = [units[c].id for c in LIST_SCOPE[user]]
    expected = set(session.exec(select(Place.id).where(Place.grid_id.in_(grid_ids))).all())
    assert len(seen) == len(set(seen)), "pagination repeated a row"
    assert set(seen) == expected


def test_create_place_only_in_own_grids(client, units):
    h = login(client, "worker-a1")
    body = {"name": "新开小卖部", "address": "中心路8号", "place_class": "nine_small", "lat": 29.35, "lon": 105.93}
    ok = client.post("/api/v1/places", json={**body, "grid_id": units["grid-a-1-1"].id}, headers=h)
    assert ok.status_code == 201 and ok.json()["town_id"] == units["town-a"].id
    other = client.post("/api/v1/places", json={**body, "grid_id": units["grid-b-1-1"].id}, headers=h)
    assert other.status_code == 422 and other.json()["error"]["field"] == "grid_id"
    police = client.post("/api/v1/places", json={**body, "grid_id": units["grid-a-1-1"].id},
                         headers=login(client, "police-a"))
    assert police.status_code == 403


def test_move_place_to_grid_outside_scope_is_refused(client, spot_places, units):
    h = login(client, "office-a")
    r = client.patch(f"/api/v1/places/{spot_places['own_grid']}", json={"grid_id": units["grid-b-1-1"].id}, headers=h)
    assert r.status_code == 422
    moved = client.patch(f"/api/v1/places/{spot_places['own_grid']}", json={"grid_id": units["grid-a-2-2"].id}, headers=h)
    assert moved.status_code == 200 and moved.json()["community_id"] == units["community-a-2"].id


# Units each role sees in /org/units: the own town's units and the county-level ones, never the other town's.
@pytest.mark.parametrize("user,sees,hidden", [
    ("worker-a1", {"town-a", "office-a", "brigade", "county"}, {"town-b", "office-b", "grid-b-1-1"}),
    ("police-b", {"town-b", "police-b", "grid-b-2-2"}, {"town-a", "police-a"}),
    ("brigade", {"town-a", "town-b", "grid-a-1-1", "grid-b-1-1"}, set()),
])
def test_unit_visibility(client, units, user, sees, hidden):
    r = client.get("/api/v1/org/units", headers=login(client, user))
    codes = {u["code"] for u in r.json()}
    assert sees <= codes and not (hidden & codes)
    for code in hidden:
        assert client.get(f"/api/v1/org/units/{units[code].id}", headers=login(client, user)).status_code == 404
