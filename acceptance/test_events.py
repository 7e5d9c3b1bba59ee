"""The event feed's cursor: one name with history, an alias, and cursors it cannot read on from.
On Citus the feed is per user (user_id required, the cursor a sequence); the same checks run
there on one user's feed."""

import base64

import pytest


@pytest.fixture(scope="session")
def per_user_feed(api):
    """Whether the deployment runs on Citus, where the feed refuses a request without user_id."""
    r = api.get("/v1/events", params={"limit": 1})
    if r.status_code == 422 and r.json().get("field") == "user_id":
        return True
    assert r.status_code == 200, r.text
    return False


@pytest.fixture
def feed(per_user_feed, user):
    """The parameters that select the feed: one user's on Citus, nothing on one PostgreSQL."""
    return {"user_id": user["id"]} if per_user_feed else {}


def test_feed_speaks_cursor_and_next_cursor(api, feed):
    first = api.get("/v1/events", params={**feed, "limit": 1})
    assert first.status_code == 200, first.text
    page = first.json()
    assert page["next_cursor"] == page["next"]
    # after is the feed's first name for cursor; both read on from the same place.
    for name in ["cursor", "after"]:
        r = api.get("/v1/events", params={**feed, name: page["next_cursor"], "limit": 5})
        assert r.status_code == 200, r.text
        assert r.json()["next_cursor"] == r.json()["next"]
        if page["events"]:
            assert page["events"][0]["id"] not in [e["id"] for e in r.json()["events"]]


def test_a_cursor_from_the_future_is_refused(api, feed, per_user_feed):
    ahead = "1099511627776" if per_user_feed else base64.urlsafe_b64encode(b"1099511627776.1").rstrip(b"=").decode()
    r = api.get("/v1/events", params={**feed, "cursor": ahead})
    assert r.status_code == 409
    assert r.json()["type"] == "urn:tally:problem:cursor-ahead"


def test_the_per_user_feed_is_citus_only(api, user, per_user_feed):
    """On Citus a request without user_id is refused and names it; on one PostgreSQL a request
    with one is."""
    params = {} if per_user_feed else {"user_id": user["id"]}
    r = api.get("/v1/events", params=params)
    assert r.status_code == 422
    assert r.json()["field"] == "user_id"


def test_a_users_feed_holds_its_events_in_sequence_order(api, user, per_user_feed):
    if not per_user_feed:
        pytest.skip("one PostgreSQL serves one feed of every user's events")
    api.deposit(user["id"], "5.00")
    r = api.get("/v1/events", params={"user_id": user["id"]})
    assert r.status_code == 200, r.text
    page = r.json()
    assert [e["data"]["sequence"] for e in page["events"]] == [1, 2, 3]
    assert {e["subject"] for e in page["events"]} == {"users/%d" % user["id"]}
    assert page["next_cursor"] == "3"
