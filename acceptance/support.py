"""HTTP helpers shared by the acceptance tests: a session bound to the server under test,
the response check every request passes, and small value makers."""

import itertools
import uuid
from datetime import timezone

import requests

PROBLEM_TYPE_PREFIX = "urn:tally:problem:"


def check_response(r):
    """Fails the test on a server error or an error that is not a problem document."""
    where = f"{r.request.method} {r.request.url}"
    assert r.status_code < 500, f"{where} → {r.status_code}: {r.text[:500]}"
    if r.status_code < 400:
        return
    content_type = r.headers.get("Content-Type", "")
    assert content_type.split(";")[0].strip() == "application/problem+json", (
        f"{where} → {r.status_code} with Content-Type {content_type!r}: {r.text[:300]}"
    )
    body = r.json()
    assert body["type"].startswith(PROBLEM_TYPE_PREFIX), body
    assert isinstance(body["title"], str) and body["title"], body
    assert body["status"] == r.status_code, body
    assert isinstance(body["detail"], str) and body["detail"], body


def iso(dt):
    """Formats an aware datetime the way clients usually send it."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_uid():
    return str(uuid.uuid4())


class Tally(requests.Session):
    """A session bound to the server under test, with shorthands for the API. Given several
    base URLs (instances of one deployment), it sends each request to the next in turn."""

    def __init__(self, *base_urls):
        super().__init__()
        self.base_url = base_urls[0]
        self._instances = itertools.cycle(base_urls)

    def request(self, method, url, *args, **kwargs):
        if url.startswith("/"):
            url = next(self._instances) + url
        kwargs.setdefault("timeout", 30)
        r = super().request(method, url, *args, **kwargs)
        check_response(r)
        return r

    def create_user(self, name="petya"):
        r = self.post("/v1/user", json={"name": name})
        assert r.status_code == 201, r.text
        return r.json()

    def transact(self, user_id, type_, amount, timestamp=None, uid=None, method="POST", **extra):
        """Sends a transaction and returns the response; uid is fresh unless given."""
        body = {"uid": uid or new_uid(), "type": type_, "amount": amount, "user_id": user_id}
        if timestamp is not None:
            body["timestamp"] = timestamp
        body.update(extra)
        return self.request(method, "/v1/transaction", json=body)

    def deposit(self, user_id, amount, timestamp=None, **kwargs):
        return self.transact(user_id, "DEPOSIT", amount, timestamp, **kwargs)

    def withdraw(self, user_id, amount, timestamp=None, **kwargs):
        return self.transact(user_id, "WITHDRAW", amount, timestamp, **kwargs)

    def applied(self, user_id, type_, amount, timestamp=None, **kwargs):
        """Sends a transaction that must be applied and returns its JSON."""
        r = self.transact(user_id, type_, amount, timestamp, **kwargs)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "APPLIED", body
        return body

    def balance(self, user_id, date=None):
        params = {"date": date} if date is not None else None
        r = self.get(f"/v1/user/{user_id}/balance", params=params)
        assert r.status_code == 200, r.text
        return r.json()["balance"]

    def history(self, user_id, **params):
        """Follows next_cursor to the end and returns every item."""
        items, cursor, pages = [], None, 0
        while True:
            query = dict(params)
            if cursor:
                query["cursor"] = cursor
            r = self.get(f"/v1/user/{user_id}/transactions", params=query)
            assert r.status_code == 200, r.text
            page = r.json()
            items.extend(page["items"])
            cursor, pages = page["next_cursor"], pages + 1
            if cursor is None:
                return items
            assert pages < 1000, "next_cursor never ends"
