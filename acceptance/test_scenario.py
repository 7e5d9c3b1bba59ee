"""The assignment's scenario, end to end, in its order."""

import uuid


def test_assignment_scenario(api):
    r = api.post("/v1/user", json={"name": "petya"})
    assert r.status_code == 201
    assert r.headers["Content-Type"].startswith("application/json")
    petya = r.json()
    assert petya["name"] == "petya"
    assert petya["balance"] == "0.00"
    assert isinstance(petya["id"], int)
    assert petya["created_at"]
    user_id = petya["id"]

    # Deposit 100.0 at 2023-01-04, with PUT as the assignment's client does.
    deposit = {
        "uid": str(uuid.uuid4()),
        "type": "DEPOSIT",
        "amount": 100.0,
        "user_id": user_id,
        "timestamp": "2023-01-04T00:00:00",
    }
    put = api.put("/v1/transaction", json=deposit)
    assert put.status_code == 200, put.text
    assert "Idempotent-Replayed" not in put.headers
    first = put.json()
    assert first["uid"] == deposit["uid"]
    assert first["user_id"] == user_id
    assert first["type"] == "DEPOSIT"
    assert first["amount"] == "100.00"
    assert first["timestamp"] == "2023-01-04T00:00:00Z"
    assert first["status"] == "APPLIED"
    assert first["balance_after"] == "100.00"
    assert first["created_at"]

    r = api.get(f"/v1/transaction/{deposit['uid']}")
    assert r.status_code == 200
    assert r.json() == first

    # The same deposit again, this time with POST: the first answer, byte for byte.
    again = api.post("/v1/transaction", json=deposit)
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == put.content
    assert api.balance(user_id) == "100.00"

    r = api.post("/v1/transaction", json={
        "uid": str(uuid.uuid4()), "type": "WITHDRAW", "amount": 50,
        "user_id": user_id, "timestamp": "2023-01-05T00:00:00",
    })
    assert r.status_code == 200, r.text
    assert r.json()["balance_after"] == "50.00"

    # 60 now is more than the 50 there is.
    refused_uid = str(uuid.uuid4())
    r = api.post("/v1/transaction", json={
        "uid": refused_uid, "type": "WITHDRAW", "amount": 60, "user_id": user_id,
    })
    assert r.status_code == 402, r.text
    problem = r.json()
    assert problem["type"] == "urn:tally:problem:insufficient-funds"
    assert problem["transaction"]["uid"] == refused_uid
    assert problem["transaction"]["status"] == "REJECTED"
    assert problem["transaction"]["amount"] == "60.00"
    assert api.balance(user_id) == "50.00"

    r = api.post("/v1/transaction", json={
        "uid": str(uuid.uuid4()), "type": "WITHDRAW", "amount": 10,
        "user_id": user_id, "timestamp": "2023-02-05T00:00:00",
    })
    assert r.status_code == 200, r.text
    assert r.json()["balance_after"] == "40.00"

    r = api.get(f"/v1/user/{user_id}/balance")
    assert r.status_code == 200
    assert r.json() == {"user_id": user_id, "balance": "40.00"}

    r = api.get(f"/v1/user/{user_id}/balance", params={"date": "2023-01-30T00:00:00"})
    assert r.status_code == 200
    assert r.json() == {"user_id": user_id, "balance": "50.00", "as_of": "2023-01-30T00:00:00Z"}

    r = api.get(f"/v1/user/{user_id}", params={"date": "2023-01-30T00:00:00"})
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == user_id
    assert body["name"] == "petya"
    assert body["balance"] == "50.00"
    assert body["as_of"] == "2023-01-30T00:00:00Z"

    r = api.get(f"/v1/user/{user_id}")
    assert r.status_code == 200
    assert r.json()["balance"] == "40.00"
    assert "as_of" not in r.json()

    # The refusal is kept under its uid but is not part of the history.
    r = api.get(f"/v1/transaction/{refused_uid}")
    assert r.status_code == 200
    assert r.json()["status"] == "REJECTED"
    history = api.history(user_id)
    assert [(t["type"], t["amount"], t["balance_after"]) for t in history] == [
        ("DEPOSIT", "100.00", "100.00"),
        ("WITHDRAW", "50.00", "50.00"),
        ("WITHDRAW", "10.00", "40.00"),
    ]
