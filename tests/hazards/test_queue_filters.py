"""The queue's filters are checked against what they may be: a misspelt one is a 422 that lists the
allowed values, not an empty queue (a desk user would read "nothing to do"), nor a 500 (the status
filter is inlined into the SQL for the partial indexes)."""

import pytest

from tests.conftest import login


@pytest.mark.parametrize("param, value, allowed", [
    ("status", "rectifing", "reinspection_due"),
    ("status", "referred'; --", "referred"),
    ("place_class", "rental_house", "key_unit_1"),
])
def test_a_misspelt_filter_is_a_422_listing_the_allowed_values(client, param, value, allowed):
    r = client.get("/api/v1/queue", params={param: value}, headers=login(client, "office-a"))
    assert r.status_code == 422, r.text
    body = r.json()["error"]
    assert body["code"] == "validation_error"
    assert any(f["field"] in (f"query.{param}", f"query.{param}.0") and allowed in f["message"] for f in body["fields"]), body


def test_valid_filters_still_answer(client):
    r = client.get("/api/v1/queue", params=[("status", "referred"), ("status", "closed"),
                                            ("place_class", "rental")], headers=login(client, "office-a"))
    assert r.status_code == 200, r.text
    assert all(i["status"] in ("referred", "closed") and i["place"]["place_class"] == "rental"
               for i in r.json()["items"])
