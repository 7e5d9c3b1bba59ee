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
