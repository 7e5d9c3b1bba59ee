"""What the API accepts and what it refuses, and how it says so."""

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from support import iso

UNKNOWN_USER = 9_000_000_000_000_000


def assert_invalid(r, field=None):
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["type"] == "urn:tally:problem:invalid-request", body
    if field is not None:
        assert body.get("field") == field, body


# Users.

def test_names_are_not_unique(api):
    first = api.create_user("petya")
    second = api.create_user("petya")
    assert first["id"] != second["id"]
    assert first["name"] == second["name"] == "petya"


def test_create_user_answers_with_location(api):
    r = api.post("/v1/user", json={"name": "petya"})
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v1/user/{r.json()['id']}"
    got = api.get(r.headers["Location"])
    assert got.status_code == 200
    assert got.json() == r.json()


@pytest.mark.parametrize("body", [
    {},
    {"name": ""},
    {"name": "   "},
    {"name": None},
    {"name": "x" * 201},
    {"name": "я" * 201},
    {"name": "pe\u0000tya"},
    {"name": ["petya"]},
    {"name": {"first": "petya"}},
    {"name": True},
])
def test_invalid_names(api, body):
    assert_invalid(api.post("/v1/user", json=body))


@pytest.mark.parametrize("name", ["x" * 200, "я" * 200, "Пётр Петрович 🐈", "  petya  "])
def test_valid_names(api, name):
    r = api.post("/v1/user", json={"name": name})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name.strip()
    assert api.get(f"/v1/user/{r.json()['id']}").json()["name"] == name.strip()


def test_name_with_invalid_utf8_in_a_form_is_refused(api):
    r = api.post("/v1/user", data=b"name=%FF%FE",
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_invalid(r, "name")


def test_user_body_must_be_json_or_form(api):
    assert_invalid(api.post("/v1/user", data=b"", headers={"Content-Type": "application/json"}))
    assert_invalid(api.post("/v1/user", data=b"{", headers={"Content-Type": "application/json"}))
    assert_invalid(api.post("/v1/user", data=b'["petya"]', headers={"Content-Type": "application/json"}))
    assert_invalid(api.post("/v1/user", data=b'{"name":"a"} {"name":"b"}',
                            headers={"Content-Type": "application/json"}))
    r = api.post("/v1/user", data=b"petya", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert r.json()["type"] == "urn:tally:problem:unsupported-media-type"


# Amounts.

@pytest.mark.parametrize("amount, stored", [
    ("0.01", "0.01"),
    (0.01, "0.01"),
    (100, "100.00"),
    ("100", "100.00"),
    (100.5, "100.50"),
    ("100.5", "100.50"),
    ("12345678.91", "12345678.91"),
    (12345678.91, "12345678.91"),
    ("1000000000.00", "1000000000.00"),
    ("1.10", "1.10"),
    ("1e2", "100.00"),
])
def test_valid_amounts(api, user, amount, stored):
    t = api.applied(user["id"], "DEPOSIT", amount)
    assert t["amount"] == stored
    assert t["balance_after"] == stored
    assert api.balance(user["id"]) == stored
    assert api.get(f"/v1/transaction/{t['uid']}").json()["amount"] == stored


def test_exact_large_amounts_add_up(api, user):
    for _ in range(3):
        api.applied(user["id"], "DEPOSIT", "12345678.91")
    api.applied(user["id"], "WITHDRAW", "0.01")
    assert api.balance(user["id"]) == "37037036.72"


@pytest.mark.parametrize("amount", [
    0, "0", "0.00", -1, "-1", -0.01, "-0.01",
    "0.001", 0.001, "1.005", "abc", "", " ", "1,00", "1.0.0", "$1", "1 000", "NaN", "Infinity",
    "1e-3", "0x10", "1000000000.01", "99999999999999999999999", 1e30, "1" * 70,
    True, None, [1], {"value": 1},
])
def test_invalid_amounts(api, user, amount):
    assert_invalid(api.deposit(user["id"], amount), "amount")
    assert api.balance(user["id"]) == "0.00"


def test_missing_amount(api, user):
    r = api.post("/v1/transaction", json={"uid": str(uuid.uuid4()), "type": "DEPOSIT", "user_id": user["id"]})
    assert_invalid(r, "amount")


# Types, users, uids.

@pytest.mark.parametrize("type_", ["", "TRANSFER", "DEPOSITS", 1, None, " Deposit ", "deposit\n"])
def test_invalid_types(api, user, type_):
    assert_invalid(api.transact(user["id"], type_, "1.00"), "type")


@pytest.mark.parametrize("type_", ["deposit", "Deposit", "dEpOsIt"])
def test_type_is_case_insensitive(api, user, type_):
    assert api.transact(user["id"], type_, "1.00").json()["type"] == "DEPOSIT"


@pytest.mark.parametrize("user_id", [0, -1, "abc", 1.5, "", None, "1e3", 2**63])
def test_invalid_user_ids(api, user_id):
    assert_invalid(api.deposit(user_id, "1.00"), "user_id")


def test_user_id_as_string_is_accepted(api, user):
    assert api.deposit(str(user["id"]), "1.00").status_code == 200


@pytest.mark.parametrize("uid", [
    "", "not-a-uuid", "1234", uuid.uuid4().hex, "{" + str(uuid.uuid4()) + "}",
    "urn:uuid:" + str(uuid.uuid4()), str(uuid.uuid4()) + "0", 12345,
])
def test_invalid_uids(api, user, uid):
    r = api.post("/v1/transaction", json={"uid": uid, "type": "DEPOSIT", "amount": "1", "user_id": user["id"]})
    assert_invalid(r, "uid")
    assert api.balance(user["id"]) == "0.00"


def test_missing_uid(api, user):
    r = api.post("/v1/transaction", json={"type": "DEPOSIT", "amount": "1", "user_id": user["id"]})
    assert_invalid(r, "uid")


@pytest.mark.parametrize("path", ["/v1/transaction/not-a-uuid", f"/v1/transaction/{uuid.uuid4().hex}"])
def test_get_transaction_with_bad_uid(api, path):
    assert_invalid(api.get(path))


def test_get_unknown_transaction(api):
    r = api.get(f"/v1/transaction/{uuid.uuid4()}")
    assert r.status_code == 404
    assert r.json()["type"] == "urn:tally:problem:not-found"


@pytest.mark.parametrize("path", [
    f"/v1/user/{UNKNOWN_USER}",
    f"/v1/user/{UNKNOWN_USER}?date=2023-01-30",
    f"/v1/user/{UNKNOWN_USER}/balance",
    f"/v1/user/{UNKNOWN_USER}/balance?date=2023-01-30",
    f"/v1/user/{UNKNOWN_USER}/transactions",
])
def test_unknown_user_endpoints(api, path):
    r = api.get(path)
    assert r.status_code == 404
    assert r.json()["type"] == "urn:tally:problem:not-found"


@pytest.mark.parametrize("type_", ["DEPOSIT", "WITHDRAW"])
def test_transaction_for_unknown_user(api, type_):
    r = api.transact(UNKNOWN_USER, type_, "1.00")
    assert r.status_code == 404
    assert r.json()["type"] == "urn:tally:problem:not-found"


@pytest.mark.parametrize("segment", ["abc", "0", "-1", "1.5", str(2**63), "%20"])
@pytest.mark.parametrize("suffix", ["", "/balance", "/transactions"])
def test_bad_user_id_in_path(api, segment, suffix):
    assert_invalid(api.get(f"/v1/user/{segment}{suffix}"))


# Timestamps.

@pytest.mark.parametrize("sent, stored", [
    ("2023-01-04T00:00:00", "2023-01-04T00:00:00Z"),
    ("2023-01-04T00:00:00Z", "2023-01-04T00:00:00Z"),
    ("2023-01-04t00:00:00z", "2023-01-04T00:00:00Z"),
    ("2023-01-04T03:00:00+03:00", "2023-01-04T00:00:00Z"),
    ("2023-01-03T19:30:00-04:30", "2023-01-04T00:00:00Z"),
    ("2023-01-04T03:00:00+0300", "2023-01-04T00:00:00Z"),
    ("2023-01-04T03:00:00+03", "2023-01-04T00:00:00Z"),
    ("2023-01-04 00:00:00", "2023-01-04T00:00:00Z"),
    ("2023-01-04 00:00", "2023-01-04T00:00:00Z"),
    ("2023-01-04", "2023-01-04T00:00:00Z"),
    ("5.05.2022 00:00", "2022-05-05T00:00:00Z"),
    ("05.05.2022", "2022-05-05T00:00:00Z"),
    ("5.5.2022 13:45:30", "2022-05-05T13:45:30Z"),
    ("2023-01-04T00:00:00.5Z", "2023-01-04T00:00:00.5Z"),
    ("2023-01-04T00:00:00.123456Z", "2023-01-04T00:00:00.123456Z"),
    ("2023-01-04T00:00:00.123456789Z", "2023-01-04T00:00:00.123456Z"),
    ("2023-01-04T00:00:00.123456789", "2023-01-04T00:00:00.123456Z"),
    ("2024-02-29T12:00:00Z", "2024-02-29T12:00:00Z"),
    ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"),
    ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
])
def test_accepted_timestamps(api, user, sent, stored):
    t = api.applied(user["id"], "DEPOSIT", "1.00", sent)
    assert t["timestamp"] == stored
    assert api.get(f"/v1/transaction/{t['uid']}").json()["timestamp"] == stored
    assert api.history(user["id"])[0]["timestamp"] == stored


def test_nine_digit_fraction_replays(api, user):
    uid = str(uuid.uuid4())
    first = api.deposit(user["id"], "1.00", "2023-01-04T00:00:00.123456789Z", uid=uid)
    assert first.status_code == 200
    again = api.deposit(user["id"], "1.00", "2023-01-04T00:00:00.123456789Z", uid=uid)
    assert again.content == first.content


def test_near_future_timestamp_is_accepted(api, user):
    t = api.applied(user["id"], "DEPOSIT", "1.00", iso(datetime.now(timezone.utc) + timedelta(minutes=2)))
    assert t["status"] == "APPLIED"


@pytest.mark.parametrize("ahead", [timedelta(minutes=10), timedelta(days=1), timedelta(days=365 * 100)])
def test_far_future_timestamp_is_refused(api, user, ahead):
    assert_invalid(api.deposit(user["id"], "1.00", iso(datetime.now(timezone.utc) + ahead)), "timestamp")
    assert api.balance(user["id"]) == "0.00"


def test_end_of_time_is_refused(api, user):
    assert_invalid(api.deposit(user["id"], "1.00", "9999-12-31T23:59:59Z"), "timestamp")
    assert_invalid(api.deposit(user["id"], "1.00", "9999-12-31T23:59:59-23:59"), "timestamp")


@pytest.mark.parametrize("timestamp", [
    "", "garbage", "yesterday", "2023-13-01", "2023-02-30", "2023-01-04T24:00:00", "2023-01-04T23:60:00",
    "2023-01-04T23:59:60Z", "2023-01-04T00:00:00+25:00", "2023-01-04T00:00:00.1234567890Z",
    "2023/01/04", "32.01.2023", "1672790400", "0000-01-01", "2023-1-4",
    "2023-01-04T00:00:00Z trailing", 1672790400, True, [2023],
])
def test_garbage_timestamps_are_refused(api, user, timestamp):
    assert_invalid(api.deposit(user["id"], "1.00", timestamp), "timestamp")


def test_null_timestamp_means_now(api, user):
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    r = api.post("/v1/transaction", json={"uid": str(uuid.uuid4()), "type": "DEPOSIT", "amount": "1",
                                          "user_id": user["id"], "timestamp": None})
    assert r.status_code == 200
    at = datetime.fromisoformat(r.json()["timestamp"].replace("Z", "+00:00"))
    assert before <= at <= datetime.now(timezone.utc) + timedelta(seconds=5)


# Balance at a date.

def test_balance_date_with_offset_and_raw_plus(api, user, base_url):
    # 2023-01-29T22:00Z is 2023-01-30T01:00 at +03:00.
    api.applied(user["id"], "DEPOSIT", "5.00", "2023-01-29T22:00:00Z")
    uid = user["id"]
    # requests leaves a '+' in a URL string alone; the server decodes it as a space.
    r = api.get(f"{base_url}/v1/user/{uid}/balance?date=2023-01-30T00:00:00+03:00")
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": uid, "balance": "0.00", "as_of": "2023-01-29T21:00:00Z"}
    r = api.get(f"{base_url}/v1/user/{uid}/balance?date=2023-01-30T02:00:00+03:00")
    assert r.json() == {"user_id": uid, "balance": "5.00", "as_of": "2023-01-29T23:00:00Z"}
    r = api.get(f"{base_url}/v1/user/{uid}?date=2023-01-30T01:00:00+03:00")
    assert r.json()["balance"] == "5.00"
    assert r.json()["as_of"] == "2023-01-29T22:00:00Z"
    # Encoded properly, it means the same.
    r = api.get(f"/v1/user/{uid}/balance", params={"date": "2023-01-30T00:00:00+03:00"})
    assert r.json()["as_of"] == "2023-01-29T21:00:00Z"
    assert r.json()["balance"] == "0.00"


def test_balance_at_an_instant_includes_that_instant(api, user):
    api.applied(user["id"], "DEPOSIT", "5.00", "2023-01-30T00:00:00Z")
    assert api.balance(user["id"], "2023-01-29T23:59:59.999999Z") == "0.00"
    assert api.balance(user["id"], "2023-01-30T00:00:00Z") == "5.00"
    assert api.balance(user["id"], "2023-01-30") == "5.00"
    assert api.balance(user["id"], "30.01.2023 00:00") == "5.00"


def test_balance_date_in_the_future_and_the_past(api, user):
    api.applied(user["id"], "DEPOSIT", "5.00", "2023-01-30T00:00:00Z")
    assert api.balance(user["id"], "9999-12-31T23:59:59Z") == "5.00"
    assert api.balance(user["id"], "0001-01-01") == "0.00"


@pytest.mark.parametrize("date", ["", "garbage", "2023-02-30", "2023-01-30T25:00:00", "30/01/2023"])
@pytest.mark.parametrize("suffix", ["", "/balance"])
def test_bad_balance_date(api, user, date, suffix):
    assert_invalid(api.get(f"/v1/user/{user['id']}{suffix}", params={"date": date}), "date")


# Body formats and limits.

def test_form_encoded_bodies(api):
    r = api.post("/v1/user", data={"name": "petya"})
    assert r.status_code == 201, r.text
    user_id = r.json()["id"]
    uid = str(uuid.uuid4())
    form = {"uid": uid, "type": "DEPOSIT", "amount": "100.0", "user_id": str(user_id),
            "timestamp": "2023-01-04T00:00:00+03:00"}
    r = api.put("/v1/transaction", data=form)
    assert r.status_code == 200, r.text
    t = r.json()
    assert (t["amount"], t["timestamp"], t["balance_after"]) == ("100.00", "2023-01-03T21:00:00Z", "100.00")
    again = api.post("/v1/transaction", data=form)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.content == r.content
    # The same transaction as JSON is the same transaction.
    as_json = api.post("/v1/transaction", json=dict(form, amount=100, user_id=user_id))
    assert as_json.content == r.content
    assert api.balance(user_id) == "100.00"


def test_json_labelled_as_form_is_read_as_json(api):
    # curl -d '{"name":"petya"}' sends this Content-Type.
    r = api.post("/v1/user", data=b'{"name": "petya"}',
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 201
    assert r.json()["name"] == "petya"


def test_body_over_one_mebibyte_is_refused(api, user):
    padding = "x" * (2 << 20)
    r = api.post("/v1/transaction", json={"uid": str(uuid.uuid4()), "type": "DEPOSIT", "amount": "1",
                                          "user_id": user["id"], "padding": padding})
    assert r.status_code == 413
    assert r.json()["type"] == "urn:tally:problem:body-too-large"
    r = api.post("/v1/user", json={"name": "petya", "padding": padding})
    assert r.status_code == 413
    assert api.balance(user["id"]) == "0.00"


def test_unknown_scalar_fields_are_ignored(api, user):
    t = api.applied(user["id"], "DEPOSIT", "1.00", comment="hello", attempt=2)
    assert t["amount"] == "1.00"


# Routing and documents.

@pytest.mark.parametrize("method, path", [
    ("GET", "/"),
    ("GET", "/v1"),
    ("GET", "/v1/usersx"),
    ("POST", "/v1/user/"),
    ("GET", "/v1/transactions"),
    ("GET", "/v1/user/1/balance/extra"),
    ("DELETE", "/nowhere"),
])
def test_unknown_route_is_a_problem(api, method, path):
    r = api.request(method, path)
    assert r.status_code == 404
    assert r.json()["type"] == "urn:tally:problem:not-found"


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/v1/user", "POST"),
    ("DELETE", "/v1/user/1", "GET"),
    ("POST", "/v1/user/1/balance", "GET"),
    ("GET", "/v1/transaction", "POST, PUT"),
    ("DELETE", "/v1/transaction", "POST, PUT"),
    ("PATCH", "/v1/transaction", "POST, PUT"),
    ("DELETE", "/v1/transaction/" + str(uuid.uuid4()), "GET"),
    ("POST", "/healthz", "GET"),
])
def test_wrong_method_is_a_problem(api, method, path, allow):
    r = api.request(method, path)
    assert r.status_code == 405
    assert r.json()["type"] == "urn:tally:problem:method-not-allowed"
    assert {m.strip() for m in r.headers["Allow"].split(",")} >= set(allow.split(", "))


def test_health_endpoints(api):
    r = api.get("/healthz")
    assert r.status_code == 200
    r = api.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"


def test_request_id_is_echoed(api):
    r = api.get("/healthz", headers={"X-Request-ID": "acceptance-123"})
    assert r.headers["X-Request-ID"] == "acceptance-123"
    assert api.get("/healthz").headers["X-Request-ID"]


def test_openapi_document_lists_the_api(api):
    r = api.get("/api/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    assert "/v1/transaction" in paths
    assert {"post", "put"} <= set(paths["/v1/transaction"])
    for path in ["/v1/user", "/v1/user/{id}", "/v1/user/{id}/balance",
                 "/v1/user/{id}/transactions", "/v1/transaction/{uid}"]:
        assert path in paths, path


def test_docs_page_is_swagger_ui(api):
    r = api.get("/api/docs")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert "<html" in r.text.lower()
    assert "swagger" in r.text.lower()
    for asset in ["swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "init.js"]:
        assert f"/api/docs/{asset}" in r.text
        a = api.get(f"/api/docs/{asset}")
        assert a.status_code == 200, asset
        assert len(a.content) > 0


def test_missing_docs_asset_is_a_problem(api):
    r = api.get("/api/docs/no-such-file.js")
    assert r.status_code == 404


@pytest.mark.parametrize("instant", [
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00-23:59",
    "1000-06-15T12:00:00Z",
])
def test_extreme_instants_are_answered(api, user, instant):
    r = api.deposit(user["id"], "1.00", instant)
    assert r.status_code in (200, 422), r.text
    for path in ["", "/balance"]:
        r = api.get(f"/v1/user/{user['id']}{path}", params={"date": instant})
        assert r.status_code in (200, 422), r.text
    r = api.get(f"/v1/user/{user['id']}/transactions", params={"from": instant, "to": instant})
    assert r.status_code in (200, 422), r.text
