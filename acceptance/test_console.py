"""The console's reads through the public API: users by name prefix, the balance series, the
history with refusals, and the console page itself."""

import uuid

import pytest

from test_validation import assert_invalid


def test_users_by_name_prefix_page_by_page(api):
    tag = uuid.uuid4().hex[:12]
    names = [f"{tag} b", f"{tag} a", f"{tag}%", f"{tag}_", f"{tag} a"]
    created = [api.create_user(n) for n in names]
    seen, cursor = [], None
    while True:
        params = {"name": tag, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/users", params=params).json()
        assert len(page["items"]) <= 2
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Byte order of names, then id: " " < "%" < "_".
    a1, a2 = sorted(u["id"] for u in created if u["name"] == f"{tag} a")
    assert [(u["name"], u["id"]) for u in seen] == [
        (f"{tag} a", a1), (f"{tag} a", a2), (f"{tag} b", created[0]["id"]),
        (f"{tag}%", created[2]["id"]), (f"{tag}_", created[3]["id"])]
    # LIKE's metacharacters are plain characters.
    assert [u["name"] for u in api.get("/v1/users", params={"name": f"{tag}%"}).json()["items"]] == [f"{tag}%"]
    assert api.get("/v1/users", params={"name": tag + "zz"}).json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"),
    ("limit=101", "limit"),
    ("limit=ten", "limit"),
    ("cursor=nope", "cursor"),
    ("cursor=" + "x" * 40, "cursor"),
    ("name=" + "x" * 201, "name"),
    ("name=%FF", "name"),
    ("name=a%00b", "name"),
])
def test_bad_user_search(api, query, field):
    assert_invalid(api.get("/v1/users?" + query), field)


def test_balance_series(api, user):
    uid = user["id"]
    first = api.applied(uid, "DEPOSIT", "100.00", "2023-01-02T00:00:00Z")
    second = api.applied(uid, "WITHDRAW", "30.00", "2023-01-04T00:00:00Z")
    api.withdraw(uid, "1000.00", "2023-01-05T00:00:00Z")  # refused: not on the timeline
    r = api.get(f"/v1/user/{uid}/balance/series",
                params={"from": "2023-01-01", "to": "2023-01-05", "points": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["user_id"], body["from"], body["to"]) == (uid, "2023-01-01T00:00:00Z", "2023-01-05T00:00:00Z")
    got = [(p["at"], p["balance"], p["transaction"] and p["transaction"]["uid"]) for p in body["points"]]
    assert got == [
        ("2023-01-01T00:00:00Z", "0.00", None),
        ("2023-01-02T00:00:00Z", "100.00", first["uid"]),
        ("2023-01-03T00:00:00Z", "100.00", first["uid"]),
        ("2023-01-04T00:00:00Z", "70.00", second["uid"]),
        ("2023-01-05T00:00:00Z", "70.00", second["uid"]),
    ]
    for p in body["points"]:
        assert api.balance(uid, p["at"]) == p["balance"]
    default = api.get(f"/v1/user/{uid}/balance/series").json()
    assert len(default["points"]) == 200
    assert default["from"] == "2023-01-02T00:00:00Z"
    assert default["points"][-1]["balance"] == "70.00"


@pytest.mark.parametrize("query, field", [
    ("points=1", "points"),
    ("points=1001", "points"),
    ("points=01", "points"),
    ("from=2023-01-02&to=2023-01-01", "from"),
    ("from=2023-01-01&to=2023-01-01", "from"),
    ("from=yesterday", "from"),
    ("to=31.02.2023", "to"),
])
def test_bad_balance_series(api, user, query, field):
    assert_invalid(api.get(f"/v1/user/{user['id']}/balance/series?" + query), field)


def test_balance_series_of_unknown_user(api):
    r = api.get("/v1/user/9000000000000000/balance/series")
    assert r.status_code == 404


def test_history_lists_refusals_on_request(api, user):
    uid = user["id"]
    api.applied(uid, "DEPOSIT", "10.00", "2023-01-01T00:00:00Z")
    refused = api.withdraw(uid, "50.00", "2023-01-02T00:00:00Z")
    assert refused.status_code == 402
    api.applied(uid, "WITHDRAW", "1.00", "2023-01-03T00:00:00Z")
    statuses = lambda **p: [(t["timestamp"][:10], t["status"]) for t in api.history(uid, limit=1, **p)]
    assert statuses() == [("2023-01-01", "APPLIED"), ("2023-01-03", "APPLIED")]
    assert statuses(status="ALL") == [("2023-01-01", "APPLIED"), ("2023-01-02", "REJECTED"), ("2023-01-03", "APPLIED")]
    rejected = api.history(uid, status="REJECTED")
    assert [(t["uid"], t["reason"], t["balance_after"]) for t in rejected] == [
        (refused.json()["transaction"]["uid"], "insufficient_funds", None)]
    assert_invalid(api.get(f"/v1/user/{uid}/transactions?status=all"), "status")


def test_console_page(api):
    for path in ["/console", "/console/users/1"]:
        r = api.get(path)
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/html")
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe" not in csp
        assert '<script src="/console/console.js"' in r.text
    assert api.get("/console/uPlot.iife.min.js").status_code == 200
    assert api.get("/console/nothing.js").status_code == 404
