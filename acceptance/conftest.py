"""Fixtures for the black-box acceptance suite.

The suite speaks HTTP only, to the server at TALLY_URL, or to the instances listed in TALLY_URLS
(acceptance/run.sh starts them on a fresh database). Every test creates its own users, so tests do not depend on each other or
on their order.

Every response passes through support.check_response: no 5xx ever, and every error is an
RFC 9457 problem (application/problem+json with type, title, status and detail).
"""

import os

import pytest

pytest.register_assert_rewrite("support")

from support import Tally  # noqa: E402 (after the rewrite hook, so its asserts explain themselves)


@pytest.fixture(scope="session")
def base_url():
    return os.environ.get("TALLY_URL", "http://127.0.0.1:8000").rstrip("/")


@pytest.fixture(scope="session")
def api(base_url):
    """A session on TALLY_URL or, when TALLY_URLS lists instances (comma-separated), on each of
    them in turn, so that consecutive requests of a test reach different instances."""
    urls = [u.rstrip("/") for u in os.environ.get("TALLY_URLS", "").split(",") if u] or [base_url]
    with Tally(*urls) as session:
        yield session


@pytest.fixture
def user(api):
    """A fresh user with a zero balance."""
    return api.create_user("petya")
