"""The timeline: back-dated transactions, equal timestamps, balances at dates, history pages."""

import base64
import uuid

import pytest


def summary(items):
    return [(t["type"], t["amount"], t["timestamp"], t["balance_after"]) for t in items]


def test_back_dated_deposit_shifts_later_balances(api, user):
    uid = user["id"]
    api.applied(uid, "DEPOSIT", "100.00", "2023-01-01T00:00:00Z")
    withdrawal = api.applied(uid, "WITHDRAW", "30.00", "2023-01-10T00:00:00Z")
    assert withdrawal["balance_after"] == "70.00"

    late = api.applied(uid, "DEPOSIT", "50.00", "2023-01-05T00:00:00Z")
    assert late["balance_after"] == "150.00"

    assert api.balance(uid) == "120.00"
    assert api.balance(uid, "2023-01-04T23:59:59Z") == "100.00"
    assert api.balance(uid, "2023-01-07T00:00:00Z") == "150.00"
    assert api.balance(uid, "2023-01-10T00:00:00Z") == "120.00"
    assert summary(api.history(uid)) == [
        ("DEPOSIT", "100.00", "2023-01-01T00:00:00Z", "100.00"),
        ("DEPOSIT", "50.00", "2023-01-05T00:00:00Z", "150.00"),
        ("WITHDRAW", "30.00", "2023-01-10T00:00:00Z", "120.00"),
    ]
    # The stored transaction shows its balance after the shift too.
    assert api.get(f"/v1/transaction/{withdrawal['uid']}").json()["balance_after"] == "120.00"


def test_back_dated_withdrawal_that_would_overdraw_later_is_refused(api, user):
    uid = user["id"]
    api.applied(uid, "DEPOSIT", "100.00", "2023-01-01T00:00:00Z")
    api.applied(uid, "WITHDRAW", "80.00", "2023-01-10T00:00:00Z")
    before = api.history(uid)

    # On 2023-01-05 there are 100, enough for 50; but on 2023-01-10 the balance would be -30.
    r = api.withdraw(uid, "50.00", "2023-01-05T00:00:00Z")
    assert r.status_code == 402, r.text
    assert r.json()["type"] == "urn:tally:problem:insufficient-funds"
    assert r.json()["transaction"]["status"] == "REJECTED"

    assert api.balance(uid) == "20.00"
    assert api.balance(uid, "2023-01-05T00:00:00Z") == "100.00"
    assert api.balance(uid, "2023-01-10T00:00:00Z") == "20.00"
    assert api.history(uid) == before

    # Up to what the later instant can spare is fine.
    t = api.applied(uid, "WITHDRAW", "20.00", "2023-01-05T00:00:00Z")
    assert t["balance_after"] == "80.00"
    assert api.balance(uid) == "0.00"
    assert [t["balance_after"] for t in api.history(uid)] == ["100.00", "80.00", "0.00"]


def test_back_dated_withdrawal_before_any_funds_is_refused(api, user):
    uid = user["id"]
    api.applied(uid, "DEPOSIT", "100.00", "2023-01-10T00:00:00Z")
    r = api.withdraw(uid, "1.00", "2023-01-09T00:00:00Z")
    assert r.status_code == 402
    assert api.balance(uid) == "100.00"


def test_withdrawal_after_a_back_dated_one_sees_it(api, user):
    uid = user["id"]
    api.applied(uid, "DEPOSIT", "100.00", "2023-01-01T00:00:00Z")
    api.applied(uid, "DEPOSIT", "1.00", "2023-01-20T00:00:00Z")
    api.applied(uid, "WITHDRAW", "60.00", "2023-01-05T00:00:00Z")
    # Now the whole timeline holds 41 from 2023-01-20 on; 42 is too much anywhere after it.
    assert api.withdraw(uid, "42.00", "2023-01-25T00:00:00Z").status_code == 402
    assert api.withdraw(uid, "41.00").status_code == 200
    assert api.balance(uid) == "0.00"


def test_equal_timestamps_apply_in_acceptance_order(api, user):
    uid = user["id"]
    at = "2023-01-04T00:00:00Z"
    afters = [api.applied(uid, type_, amount, at)["balance_after"] for type_, amount in [
        ("DEPOSIT", "10.00"), ("DEPOSIT", "20.00"), ("WITHDRAW", "25.00"), ("DEPOSIT", "30.00"),
    ]]
    assert afters == ["10.00", "30.00", "5.00", "35.00"]
    # More than the balance at that instant is refused, even at the same instant.
    assert api.withdraw(uid, "35.01", at).status_code == 402
    assert summary(api.history(uid)) == [
        ("DEPOSIT", "10.00", at, "10.00"),
        ("DEPOSIT", "20.00", at, "30.00"),
        ("WITHDRAW", "25.00", at, "5.00"),
        ("DEPOSIT", "30.00", at, "35.00"),
    ]
    assert api.balance(uid, at) == "35.00"


def test_back_dated_transaction_at_an_existing_instant_goes_after_it(api, user):
    uid = user["id"]
    api.applied(uid, "DEPOSIT", "100.00", "2023-01-01T00:00:00Z")
    api.applied(uid, "DEPOSIT", "5.00", "2023-01-10T00:00:00Z")
    t = api.applied(uid, "WITHDRAW", "40.00", "2023-01-01T00:00:00Z")
    assert t["balance_after"] == "60.00"
    assert summary(api.history(uid)) == [
        ("DEPOSIT", "100.00", "2023-01-01T00:00:00Z", "100.00"),
        ("WITHDRAW", "40.00", "2023-01-01T00:00:00Z", "60.00"),
        ("DEPOSIT", "5.00", "2023-01-10T00:00:00Z", "65.00"),
    ]
    assert api.balance(uid) == "65.00"


def test_each_balance_after_is_the_balance_at_its_timestamp(api, user):
    uid = user["id"]
    for amount, day in [("10.00", 15), ("20.00", 3), ("5.00", 9), ("7.50", 27), ("1.25", 1)]:
        api.applied(uid, "DEPOSIT", amount, f"2023-03-{day:02d}T12:00:00Z")
    api.applied(uid, "WITHDRAW", "30.00", "2023-03-20T00:00:00Z")
    history = api.history(uid)
    assert [t["timestamp"][:10] for t in history] == [
        "2023-03-01", "2023-03-03", "2023-03-09", "2023-03-15", "2023-03-20", "2023-03-27"]
    for t in history:
        assert api.balance(uid, t["timestamp"]) == t["balance_after"], t
    assert history[-1]["balance_after"] == api.balance(uid) == "13.75"


def test_history_excludes_refusals_and_other_users(api, user):
    uid = user["id"]
    other = api.create_user("vasya")
    api.applied(uid, "DEPOSIT", "10.00", "2023-01-01T00:00:00Z")
    api.applied(other["id"], "DEPOSIT", "99.00", "2023-01-01T00:00:00Z")
    assert api.withdraw(uid, "11.00").status_code == 402
    assert [t["amount"] for t in api.history(uid)] == ["10.00"]
    assert [t["amount"] for t in api.history(other["id"])] == ["99.00"]


def test_history_of_a_new_user_is_empty(api, user):
    r = api.get(f"/v1/user/{user['id']}/transactions")
    assert r.status_code == 200
    assert r.json() == {"items": [], "next_cursor": None}


@pytest.fixture
def seven(api, user):
    """A user with seven deposits, two of them at the same instant, sent out of order."""
    uid = user["id"]
    for amount, at in [
        ("1.00", "2023-01-01T00:00:00Z"),
        ("2.00", "2023-01-02T00:00:00Z"),
        ("6.00", "2023-01-06T00:00:00Z"),
        ("3.00", "2023-01-03T00:00:00Z"),
        ("4.00", "2023-01-04T00:00:00Z"),
        ("4.50", "2023-01-04T00:00:00Z"),
        ("7.00", "2023-01-07T00:00:00Z"),
    ]:
        api.applied(uid, "DEPOSIT", amount, at)
    return uid


SEVEN_IN_ORDER = ["1.00", "2.00", "3.00", "4.00", "4.50", "6.00", "7.00"]


@pytest.mark.parametrize("limit", [1, 2, 3, 6, 7, 8, 1000])
def test_pages_cover_every_item_once_in_order(api, seven, limit):
    pages, cursor = [], None
    while True:
        params = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        r = api.get(f"/v1/user/{seven}/transactions", params=params)
        assert r.status_code == 200
        page = r.json()
        assert 0 < len(page["items"]) <= limit or (not pages and not page["items"])
        pages.append([t["amount"] for t in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["items"]) == limit
    assert [a for p in pages for a in p] == SEVEN_IN_ORDER
    assert len(pages) == -(-7 // limit)
    balances = [t["balance_after"] for t in api.history(seven, limit=limit)]
    assert balances == ["1.00", "3.00", "6.00", "10.00", "14.50", "20.50", "27.50"]


def test_default_page_holds_everything_small(api, seven):
    r = api.get(f"/v1/user/{seven}/transactions")
    assert [t["amount"] for t in r.json()["items"]] == SEVEN_IN_ORDER
    assert r.json()["next_cursor"] is None


def test_from_and_to_are_inclusive(api, seven):
    def amounts(**params):
        return [t["amount"] for t in api.history(seven, **params)]

    assert amounts(**{"from": "2023-01-03T00:00:00Z"}) == ["3.00", "4.00", "4.50", "6.00", "7.00"]
    assert amounts(to="2023-01-04T00:00:00Z") == ["1.00", "2.00", "3.00", "4.00", "4.50"]
    assert amounts(**{"from": "2023-01-02", "to": "2023-01-04"}) == ["2.00", "3.00", "4.00", "4.50"]
    assert amounts(**{"from": "2023-01-04", "to": "2023-01-04"}) == ["4.00", "4.50"]
    assert amounts(**{"from": "2023-01-04T00:00:00.000001Z"}) == ["6.00", "7.00"]
    assert amounts(**{"from": "2023-01-05", "to": "2023-01-05T23:59:59Z"}) == []
    assert amounts(**{"from": "2023-01-07", "to": "2023-01-01"}) == []
    assert amounts(**{"from": "2023-01-04T03:00:00+03:00"}) == ["4.00", "4.50", "6.00", "7.00"]


def test_to_a_date_covers_that_whole_day(api, user):
    uid = user["id"]
    for at in ["2023-12-31T00:00:00Z", "2023-12-31T15:00:00Z", "2024-01-01T00:00:00Z"]:
        api.applied(uid, "DEPOSIT", "1.00", at)

    def stamps(**params):
        return [t["timestamp"] for t in api.history(uid, **params)]

    assert stamps(to="2023-12-31") == ["2023-12-31T00:00:00Z", "2023-12-31T15:00:00Z"]
    assert stamps(**{"from": "2023-01-01", "to": "2023-12-31"}) == ["2023-12-31T00:00:00Z", "2023-12-31T15:00:00Z"]
    assert stamps(to="2023-12-31T00:00:00Z") == ["2023-12-31T00:00:00Z"]
    assert stamps(**{"from": "2024-01-01"}) == ["2024-01-01T00:00:00Z"]


def test_from_and_to_with_pages(api, seven):
    items = api.history(seven, **{"from": "2023-01-02", "to": "2023-01-06", "limit": 2})
    assert [t["amount"] for t in items] == ["2.00", "3.00", "4.00", "4.50", "6.00"]


def test_raw_plus_in_history_bounds(api, seven, base_url):
    r = api.get(f"{base_url}/v1/user/{seven}/transactions?from=2023-01-04T03:00:00+03:00")
    assert r.status_code == 200, r.text
    assert [t["amount"] for t in r.json()["items"]] == ["4.00", "4.50", "6.00", "7.00"]


@pytest.mark.parametrize("params", [
    {"limit": "0"}, {"limit": "-1"}, {"limit": "1001"}, {"limit": "ten"}, {"limit": ""},
    {"cursor": "garbage"}, {"cursor": "!!!"}, {"cursor": "MTIz"},
    {"from": "garbage"}, {"to": "2023-02-30"}, {"from": ""},
])
def test_bad_history_parameters(api, user, params):
    r = api.get(f"/v1/user/{user['id']}/transactions", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["type"] == "urn:tally:problem:invalid-request"


def test_transaction_read_back_matches_its_answer(api, user):
    t = api.applied(user["id"], "DEPOSIT", "9.99", "2023-01-04T10:11:12.131415Z")
    r = api.get(f"/v1/transaction/{t['uid']}")
    assert r.status_code == 200
    assert r.json() == t
    assert api.history(user["id"]) == [t]


def test_transaction_without_timestamp_is_stamped_now_and_ordered_last(api, user):
    uid = user["id"]
    api.applied(uid, "DEPOSIT", "10.00", "2023-01-04T00:00:00Z")
    now = api.applied(uid, "DEPOSIT", "1.00")
    assert now["timestamp"] > "2023-01-04T00:00:00Z"
    assert now["balance_after"] == "11.00"
    assert [t["uid"] for t in api.history(uid)][-1] == now["uid"]
    assert api.get(f"/v1/transaction/{uuid.UUID(now['uid'])}").json() == now


@pytest.mark.parametrize("raw", [
    "-300000000000000000.1",
    "-9223372036854775808.1",
    "9223372036854775807.9223372036854775807",
    "0.-1",
    "253402300800000000.0",
])
def test_forged_cursors_are_answered(api, seven, raw):
    cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    r = api.get(f"/v1/user/{seven}/transactions", params={"cursor": cursor})
    assert r.status_code in (200, 422), r.text
