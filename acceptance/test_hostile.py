"""What a hostile client sends: framing errors, huge inputs, look-alike values."""

import json
import socket
import urllib.parse
import uuid

import pytest


def exchange(base_url, request: bytes):
    """Sends raw bytes on a new connection; returns the first answer's status, headers and body."""
    url = urllib.parse.urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and not head.startswith(b"HTTP/1.1 1"):
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(body) >= length[0]:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


POST = b"POST /v1/transaction HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("request_bytes, status, problem", [
    pytest.param(POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, "malformed-request", id="gzip-chunked"),
    pytest.param(b"GET /healthz HTTP/1.1\r\n\r\n", 400, "malformed-request", id="no-host"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: tally\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n",
                 431, "headers-too-large", id="headers-over-32KiB"),
    pytest.param(b"M" * 500_000 + b" / HTTP/1.1\r\nHost: tally\r\n\r\n", 431, "headers-too-large", id="500KB-method"),
    pytest.param(b"GET * HTTP/1.1\r\nHost: tally\r\n\r\n", 400, "malformed-request", id="get-star"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "malformed-request", id="http2-preface"),
    pytest.param(b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n", 400, "malformed-request", id="connect"),
])
def test_framing_errors_are_4xx_problems(base_url, request_bytes, status, problem):
    got, headers, body = exchange(base_url, request_bytes)
    assert got == status, body
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"] == "urn:tally:problem:" + problem


@pytest.mark.parametrize("path", ["/v1/transaction", "/v1/user"])
def test_too_large_is_answered_before_the_body(base_url, path):
    got, headers, body = exchange(base_url, f"POST {path} HTTP/1.1\r\nHost: tally\r\n"
                                  "Content-Type: application/json\r\nContent-Length: 5000000\r\n"
                                  "Expect: 100-continue\r\n\r\n".encode())
    assert got == 413, body
    assert json.loads(body)["type"] == "urn:tally:problem:body-too-large"


def test_huge_path_gets_a_small_answer(api):
    r = api.get("/" + "p" * 20_000)
    assert r.status_code == 404
    assert len(r.content) < 1000


def test_made_up_method_gets_a_small_answer(api):
    r = api.request("X" * 20_000, "/v1/user/1")
    assert r.status_code == 405
    assert len(r.content) < 1000


@pytest.mark.parametrize("body, field", [
    pytest.param({"name": "\u200b"}, "name", id="zero-width-space"),
    pytest.param({"name": "\ufeff"}, "name", id="byte-order-mark"),
    pytest.param({"name": "\u202e\u202d"}, "name", id="bidi-overrides"),
    pytest.param({"name": 5}, "name", id="number"),
])
def test_invisible_or_non_string_names(api, body, field):
    r = api.post("/v1/user", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


@pytest.mark.parametrize("type_", ["depoſit", "DEPOSıT"])
def test_unicode_case_folding_of_type_is_refused(api, user, type_):
    r = api.transact(user["id"], type_, "1.00")
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "type"
    assert api.balance(user["id"]) == "0.00"


@pytest.mark.parametrize("raw", [
    pytest.param('{{"uid": "{uid}", "user_id": {user}, "type": "DEPOSIT", "amount": "1", "amount": "2"}}', id="duplicate-amount"),
    pytest.param('{{"uid": "{uid}", "user_id": "+{user}", "type": "DEPOSIT", "amount": "1"}}', id="plus-user-id"),
    pytest.param('{{"uid": "{uid}", "user_id": "0{user}", "type": "DEPOSIT", "amount": "1"}}', id="zero-padded-user-id"),
    pytest.param('{{"uid": "{uid}", "user_id": {user}.0, "type": "DEPOSIT", "amount": "1"}}', id="fractional-user-id"),
    pytest.param('{{"uid": "00000000-0000-0000-0000-000000000000", "user_id": {user}, "type": "DEPOSIT", "amount": "1"}}', id="zero-uid"),
])
def test_look_alike_transactions_are_refused(api, user, raw):
    body = raw.format(uid=uuid.uuid4(), user=user["id"])
    r = api.post("/v1/transaction", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert api.balance(user["id"]) == "0.00"


def test_invalid_utf8_in_json_is_refused(api):
    r = api.post("/v1/user", data=b'{"name": "Pe\xfftya"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("segment", ["+1", "01"])
def test_non_canonical_ids_in_paths(api, user, segment):
    r = api.get(f"/v1/user/{segment.replace('1', str(user['id']))}")
    assert r.status_code == 422, r.text


def test_decode_errors_name_no_go_types(api):
    r = api.post("/v1/transaction", data="[]", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert "Go value" not in r.json()["detail"] and "json:" not in r.json()["detail"]


@pytest.mark.parametrize("query, field", [
    pytest.param("/balance?date=2023-01-01;", None, id="trailing-semicolon"),
    pytest.param("/balance?date=2023-01-01%zz", None, id="bad-escape"),
    pytest.param("/transactions?limit=%zz", None, id="bad-escape-limit"),
    pytest.param("/balance?date=2023-01-01&date=2024-01-01", "date", id="repeated-date"),
    pytest.param("/transactions?limit=5&limit=99999", "limit", id="repeated-limit"),
])
def test_query_strings_are_read_whole_or_refused(base_url, user, query, field):
    # Raw bytes: an HTTP library would re-escape the bad escapes before sending them.
    got, _, body = exchange(base_url, f"GET /v1/user/{user['id']}{query} HTTP/1.1\r\nHost: tally\r\n\r\n".encode())
    assert got == 422, body
    assert json.loads(body).get("field") == field


def test_transfer_encoding_closes_the_connection(base_url):
    """The bytes after a chunked body are never read as a second request."""
    url = urllib.parse.urlsplit(base_url)
    body = b'{"name":"a"}'
    request = (b"POST /v1/user HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\n"
               b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
               + b"GET /healthz HTTP/1.1\r\nHost: tally\r\n\r\n")
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 201 "), data
    assert b"\r\nConnection: close\r\n" in data
    assert data.count(b"HTTP/1.1 ") == 1, data


@pytest.mark.parametrize("body", [
    pytest.param('{"name": "\\ud800"}', id="lone-high-surrogate"),
    pytest.param('{"name": "x\\udc00y"}', id="lone-low-surrogate"),
    pytest.param('{"name": "\u3164"}', id="hangul-filler"),
    pytest.param('{"name": "\u2800\u2800"}', id="braille-blanks"),
])
def test_names_that_are_nothing_are_refused(api, body):
    r = api.post("/v1/user", data=body.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "name"


def test_two_idempotency_keys_are_refused(base_url, api, user):
    body = json.dumps({"user_id": user["id"], "type": "DEPOSIT", "amount": "1"}).encode()
    got, _, answer = exchange(base_url, POST + b"Idempotency-Key: %s\r\nIdempotency-Key: %s\r\nContent-Length: %d\r\n\r\n"
                              % (str(uuid.uuid4()).encode(), str(uuid.uuid4()).encode(), len(body)) + body)
    assert got == 422, answer
    assert json.loads(answer)["field"] == "Idempotency-Key"
    assert api.balance(user["id"]) == "0.00"


def test_content_encoding_is_refused(api):
    r = api.post("/v1/user", data=b'{"name": "a"}', headers={"Content-Type": "application/json", "Content-Encoding": "br"})
    assert r.status_code == 415, r.text
