"""Shared fixtures. Real parts only: SQLite files, subprocesses, the local PostgreSQL and
Redis (skipped with a reason on a laptop without them, a failure in CI)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines_app.testing import Installation
from tests.helpers.figures import Figures
from tests.helpers.services import CHROMIUM, IN_CI, POSTGRES_URL, REDIS_URL, need_service


@pytest.fixture
def postgres_url() -> str:
    need_service("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


@pytest.fixture
def postgres_database(postgres_url: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a migrated PostgreSQL database of this test's own, dropped after it with
    every connection left on it."""
    psycopg = pytest.importorskip("psycopg")
    name = f"levipanel_test_{uuid.uuid4().hex[:12]}"
    url = f"{postgres_url.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with Installation(tmp_path / "migrate", {"DATABASE_URL": url}) as installation:
            installation.migrate()
        yield url
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    need_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"Chromium is not installed at {CHROMIUM} (CI=true: it is required)")
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(autouse=True)
def _api_reads_see_the_test_transaction(request) -> Iterator[None]:
    """The API's status reads run on threads of their own (``engines_app.api.reads``). In a
    test inside a transaction they read through the test's connection, as Django's live
    test server does, or they would not see the test's rows."""
    from pytest_django.fixtures import validate_django_db

    marker = request.node.get_closest_marker("django_db")
    transactional = {"transactional_db", "live_server"} & set(request.fixturenames) or (
        marker is not None and validate_django_db(marker)[0]  # (transaction, …)
    )
    if transactional or ("db" not in request.fixturenames and marker is None):
        yield
        return
    from django.db import DEFAULT_DB_ALIAS, connections

    from engines_app.api.reads import sharing

    request.getfixturevalue("db")
    with sharing(connections[DEFAULT_DB_ALIAS]):
        yield


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Installation]:
    """A fresh installation with a migrated SQLite file of its own."""
    with Installation(tmp_path / "data") as installation:
        installation.migrate()
        yield installation


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The failure suite's figures: ``figures.record(scenario, figure, value, unit, expected)``
    adds a row to ``test-artifacts/reliability.json`` ({"date", "machine", "rows": [{"scenario",
    "figure", "value", "unit", "expected"}]}), the table of ``docs/reliability.md``; see
    ``tests/helpers/figures.py``."""
    return Figures()


def pytest_collection_modifyitems(config, items):
    """Browser tests last: Playwright's session loop breaks later asyncio tests."""
    browser = [
        item
        for item in items
        if "page" in getattr(item, "fixturenames", ()) or item.get_closest_marker("browser")
    ]
    items[:] = [item for item in items if item not in browser] + browser


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Playwright's browser: the system's Chromium, not a browser Playwright downloads."""
    if not CHROMIUM.exists():
        reason = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        pytest.fail(reason) if IN_CI else pytest.skip(reason)
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}
