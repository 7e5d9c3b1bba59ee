"""The event feed's cursor: one name with history, an alias, and cursors it cannot read on from."""

import base64


def test_feed_speaks_cursor_and_next_cursor(api, user):
    first = api.get("/v1/events", params={"limit": 1})
    assert first.status_code == 200, first.text
    page = first.json()
    assert page["next_cursor"] == page["next"]
    # after is the feed's first name for cursor; both read on from the same place.
    for name in ["cursor", "after"]:
        r = api.get("/v1/events", params={name: page["next_cursor"], "limit": 5})
        assert r.status_code == 200, r.text
        assert r.json()["next_cursor"] == r.json()["next"]
        if page["events"]:
            assert page["events"][0]["id"] not in [e["id"] for e in r.json()["events"]]


def test_a_cursor_from_the_future_is_refused(api):
    ahead = base64.urlsafe_b64encode(b"1099511627776.1").rstrip(b"=").decode()
    r = api.get("/v1/events", params={"cursor": ahead})
    assert r.status_code == 409
    assert r.json()["type"] == "urn:tally:problem:cursor-ahead"
