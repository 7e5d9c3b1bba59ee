"""The uid makes every transaction exactly-once: retries get the first answer back."""

import threading
import uuid

import pytest

from support import Tally


def concurrently(api, n, send):
    """Calls send(session) from n threads at once, each with a connection of its own, and
    returns the responses."""
    results = []

    def run():
        with Tally(api.base_url) as own:
            results.append(send(own))

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == n, "a client thread failed; see its traceback above"
    return results


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_both_methods_create_and_replay(api, user, method):
    uid = str(uuid.uuid4())
    first = api.deposit(user["id"], "25.50", "2023-03-01T12:00:00Z", uid=uid, method=method)
    assert first.status_code == 200
    other = "PUT" if method == "POST" else "POST"
    again = api.deposit(user["id"], "25.50", "2023-03-01T12:00:00Z", uid=uid, method=other)
    assert again.status_code == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.content == first.content
    assert api.balance(user["id"]) == "25.50"


def test_replay_matches_amount_by_value_not_text(api, user):
    uid = str(uuid.uuid4())
    first = api.deposit(user["id"], 100, "2023-01-04", uid=uid)
    assert first.status_code == 200
    for same in ["100", "100.00", 100.0, "1e2"]:
        again = api.deposit(user["id"], same, "2023-01-04T00:00:00+00:00", uid=uid)
        assert again.status_code == 200, (same, again.text)
        assert again.content == first.content
    assert api.balance(user["id"]) == "100.00"


def test_replay_without_timestamp(api, user):
    uid = str(uuid.uuid4())
    first = api.deposit(user["id"], "7.00", uid=uid)
    assert first.status_code == 200
    again = api.deposit(user["id"], "7.00", uid=uid)
    assert again.status_code == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.content == first.content
    assert api.balance(user["id"]) == "7.00"


def test_refusal_replays_as_refusal_after_funds_arrive(api, user):
    uid = str(uuid.uuid4())
    refused = api.withdraw(user["id"], "30.00", uid=uid)
    assert refused.status_code == 402
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert refused.json()["transaction"]["status"] == "REJECTED"

    api.applied(user["id"], "DEPOSIT", "100.00")
    again = api.withdraw(user["id"], "30.00", uid=uid)
    assert again.status_code == 402
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.content == refused.content
    assert api.balance(user["id"]) == "100.00"

    r = api.get(f"/v1/transaction/{uid}")
    assert r.status_code == 200
    assert r.json()["status"] == "REJECTED"
    assert r.json()["balance_after"] is None


@pytest.mark.parametrize("change", [
    {"amount": "60.00"},
    {"type": "WITHDRAW"},
    {"timestamp": "2023-01-05T00:00:00Z"},
    {"timestamp": None},
    {"user_id": "other"},
])
def test_uid_reused_for_another_transaction_is_a_conflict(api, user, change):
    uid = str(uuid.uuid4())
    body = {"uid": uid, "type": "DEPOSIT", "amount": "50.00", "user_id": user["id"],
            "timestamp": "2023-01-04T00:00:00Z"}
    first = api.post("/v1/transaction", json=body)
    assert first.status_code == 200

    changed = dict(body, **change)
    if change.get("user_id") == "other":
        changed["user_id"] = api.create_user("vasya")["id"]
    if "timestamp" in change and change["timestamp"] is None:
        del changed["timestamp"]
    r = api.post("/v1/transaction", json=changed)
    assert r.status_code == 422, r.text
    assert r.json()["type"] == "urn:tally:problem:idempotency-conflict"
    assert "Idempotent-Replayed" not in r.headers

    assert api.balance(user["id"]) == "50.00"
    if changed["user_id"] != user["id"]:
        assert api.balance(changed["user_id"]) == "0.00"
    assert api.get(f"/v1/transaction/{uid}").json() == first.json()
    # The original still replays.
    assert api.post("/v1/transaction", json=body).content == first.content


def test_uid_in_idempotency_key_header(api, user):
    uid = str(uuid.uuid4())
    body = {"type": "DEPOSIT", "amount": "12.34", "user_id": user["id"]}
    first = api.post("/v1/transaction", json=body, headers={"Idempotency-Key": uid})
    assert first.status_code == 200, first.text
    assert first.json()["uid"] == uid

    # The header and the body field name the same key.
    again = api.post("/v1/transaction", json=dict(body, uid=uid))
    assert again.status_code == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.content == first.content
    both = api.post("/v1/transaction", json=dict(body, uid=uid), headers={"Idempotency-Key": uid})
    assert both.content == first.content
    assert api.balance(user["id"]) == "12.34"


def test_idempotency_key_header_disagreeing_with_uid_is_invalid(api, user):
    r = api.post("/v1/transaction",
                 json={"uid": str(uuid.uuid4()), "type": "DEPOSIT", "amount": "1.00", "user_id": user["id"]},
                 headers={"Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 422
    assert api.balance(user["id"]) == "0.00"


def test_uid_is_case_insensitive(api, user):
    uid = str(uuid.uuid4())
    first = api.deposit(user["id"], "3.00", uid=uid.upper())
    assert first.status_code == 200
    assert first.json()["uid"] == uid
    again = api.deposit(user["id"], "3.00", uid=uid)
    assert again.status_code == 200
    assert again.content == first.content
    assert api.get(f"/v1/transaction/{uid.upper()}").json()["uid"] == uid
    assert api.balance(user["id"]) == "3.00"


def test_unknown_user_is_not_recorded(api):
    uid = str(uuid.uuid4())
    r = api.deposit(9_000_000_000_000_000, "10.00", uid=uid)
    assert r.status_code == 404
    assert r.json()["type"] == "urn:tally:problem:not-found"
    assert api.get(f"/v1/transaction/{uid}").status_code == 404

    # Nothing was written, so the uid is still free for a real transaction.
    owner = api.create_user("petya")
    r = api.deposit(owner["id"], "10.00", uid=uid)
    assert r.status_code == 200
    assert "Idempotent-Replayed" not in r.headers
    assert api.balance(owner["id"]) == "10.00"


def test_invalid_request_is_not_recorded(api, user):
    uid = str(uuid.uuid4())
    assert api.deposit(user["id"], "0", uid=uid).status_code == 422
    assert api.get(f"/v1/transaction/{uid}").status_code == 404
    assert api.deposit(user["id"], "1.00", uid=uid).status_code == 200


def test_concurrent_retries_apply_once(api, user):
    uid = str(uuid.uuid4())
    results = concurrently(api, 12, lambda own: own.deposit(user["id"], "5.00", uid=uid))
    assert {r.status_code for r in results} == {200}
    assert len({r.content for r in results}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") != "true" for r in results) == 1
    assert api.balance(user["id"]) == "5.00"
    assert len(api.history(user["id"])) == 1


def test_concurrent_withdrawals_never_overdraw(api, user):
    api.applied(user["id"], "DEPOSIT", "100.00")
    results = concurrently(api, 16, lambda own: own.withdraw(user["id"], "10.00"))
    codes = sorted(r.status_code for r in results)
    assert codes == [200] * 10 + [402] * 6
    assert api.balance(user["id"]) == "0.00"
    afters = [t["balance_after"] for t in api.history(user["id"])]
    assert afters == [f"{100 - 10 * i}.00" for i in range(11)]


def create_user_with_key(api, name, key):
    return api.post("/v1/user", json={"name": name}, headers={"Idempotency-Key": key})


def test_user_creation_with_idempotency_key_replays(api):
    key = str(uuid.uuid4())
    first = create_user_with_key(api, "vasya", key)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    again = create_user_with_key(api, "vasya", key)
    assert again.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.content == first.content
    assert again.headers["Location"] == first.headers["Location"] == f"/v1/user/{first.json()['id']}"


def test_user_idempotency_key_with_another_name_is_a_conflict(api):
    key = str(uuid.uuid4())
    assert create_user_with_key(api, "vasya", key).status_code == 201
    r = create_user_with_key(api, "petya", key)
    assert r.status_code == 422
    assert r.json()["type"] == "urn:tally:problem:idempotency-conflict"
    assert r.json()["field"] == "Idempotency-Key"


@pytest.mark.parametrize("key", ["two words", "x" * 256, "ключ".encode().decode("latin-1")])
def test_malformed_user_idempotency_key_is_refused(api, key):
    r = create_user_with_key(api, "vasya", key)
    assert r.status_code == 422
    assert r.json()["field"] == "Idempotency-Key"


def test_user_creation_without_key_creates_each_time(api):
    first, second = api.create_user("vasya"), api.create_user("vasya")
    assert first["id"] != second["id"]


def test_concurrent_user_creations_with_one_key_create_one_user(api):
    key = str(uuid.uuid4())
    results = concurrently(api, 12, lambda own: create_user_with_key(own, "masha", key))
    assert {r.status_code for r in results} == {201}
    assert len({r.content for r in results}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") != "true" for r in results) == 1
