"""Fixtures for the black-box acceptance suite.

The suite speaks HTTP only, to the server at TALLY_URL (acceptance/run.sh starts one on a
fresh database). Every test creates its own users, so tests do not depend on each other or
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
    with Tally(base_url) as session:
        yield session


@pytest.fixture
def user(api):
    """A fresh user with a zero balance."""
    return api.create_user("petya")
