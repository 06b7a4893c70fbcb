"""The status reads' own thread and kept connection: what makes a status request cheap,
and what keeps it working when the kept connection dies."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.db import connection

from engines_app.api import reads
from engines_app.api.reads import read, read_fleet
from engines_app.testing import Installation

SETUP = """
from django.contrib.auth import get_user_model
from engines_app.api.tokens import api_token_create
from engines_app.models import Engine
Engine.objects.create(symbol="BTCUSDT")
print(api_token_create(user=get_user_model().objects.create_user("reader"), name="t")[1])
"""


def _connection_and_thread():
    connection.ensure_connection()
    return connection.connection, threading.get_ident()


@pytest.mark.django_db(transaction=True)
def test_reads_run_on_one_thread_and_keep_its_connection():
    first, second = (read(_connection_and_thread) for _ in range(2))
    assert first == second
    assert first[1] != _connection_and_thread()[1]


@pytest.mark.django_db(transaction=True)
def test_a_connection_left_idle_too_long_is_replaced(monkeypatch):
    """A firewall may have dropped it without a word."""
    monkeypatch.setattr(reads, "IDLE_CLOSE", 0.0)
    first, second = (read(_connection_and_thread) for _ in range(2))
    assert first[0] is not second[0] and first[1] == second[1]


def test_the_status_reads_share_the_apis_two_security_schemes(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"TokenAuth", "SessionAuth"}
    operation = schema["paths"]["/engines/status"]["get"]
    assert operation["security"] == [{"TokenAuth": []}, {"SessionAuth": []}]


@pytest.mark.django_db(transaction=True)
def test_a_fleet_read_in_progress_does_not_hold_up_a_short_read():
    """A list of 10,000 engines being built, and a read of one engine meanwhile."""
    building, done = threading.Event(), threading.Event()

    def build():
        building.set()
        return done.wait(10)

    with ThreadPoolExecutor(max_workers=1) as request:  # the list request's own thread
        fleet = request.submit(read_fleet, build)
        assert building.wait(10)
        try:
            short = request_thread_read(_connection_and_thread)
            assert not fleet.done()
        finally:
            done.set()
        assert fleet.result(10)
    assert short[1] != threading.get_ident()


def request_thread_read(function):
    """``read(function)`` from another request's thread, given up after 5 s."""
    with ThreadPoolExecutor(max_workers=1) as request:
        return request.submit(read, function).result(5)


def test_a_read_within_a_read_runs_in_place():
    """A session check that reads again on the same thread: waiting would never end."""
    outer = request_thread_read(lambda: (threading.get_ident(), read(threading.get_ident)))
    assert outer[0] == outer[1] != threading.get_ident()


def test_a_status_read_survives_its_kept_connection_being_killed(postgres_database, tmp_path):
    """PostgreSQL restarted, a connection cut: the next request is served, not a 503."""
    import httpx

    env = {"DATABASE_URL": postgres_database}
    with Installation(tmp_path / "data", env) as installation:
        key = installation.manage("shell", "-c", SETUP).stdout.split()[-1]
        installation.serve()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=installation.url, headers=headers, timeout=10) as http:
            for url in ("/engines/status/BTCUSDT", "/engines/status"):  # both threads
                assert http.get(url).status_code == 200
            name = postgres_database.rsplit("/", 1)[1]
            with psycopg.connect(postgres_database, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                ).fetchone()[0]
            assert killed >= 1  # the reader's kept connection
            for url in ("/engines/status/BTCUSDT", "/engines/status"):
                response = http.get(url)
                assert response.status_code == 200, response.text


@pytest.mark.django_db(transaction=True)
def test_a_token_use_noted_while_a_writer_holds_the_database_holds_up_no_other_read(client):
    """Noting a token's use is a write: it waits for the lock on the request's own thread,
    not on the short reads' thread that every status request needs."""
    import sqlite3

    from django.contrib.auth import get_user_model

    from engines_app.api.tokens import api_token_create
    from engines_app.models import Engine

    if connection.vendor != "sqlite":
        pytest.skip("holds SQLite's write lock from a second connection")
    Engine.objects.create(symbol="BTCUSDT")
    key = api_token_create(user=get_user_model().objects.create_user("reader"), name="t")[1]
    writer = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process writing for a while
    try:
        with ThreadPoolExecutor(max_workers=1) as request:
            status = request.submit(
                client.get, "/engines/status/BTCUSDT", HTTP_AUTHORIZATION=f"Bearer {key}"
            )
            time.sleep(0.5)
            assert not status.done()  # its token is due to be noted: it waits for the lock
            assert request_thread_read(Engine.objects.count) == 1
            writer.execute("ROLLBACK")
            assert status.result(10).status_code == 200
    finally:
        writer.close()


@pytest.mark.django_db(transaction=True)
def test_the_fleet_thread_reads_the_data_version_again_only_after_another_commit():
    """On SQLite the pragma tells whether anything was committed: no aggregate over every
    engine row for each list request while nothing was."""
    from datetime import UTC, datetime

    from django.test.utils import CaptureQueriesContext

    from engines_app.models import Engine
    from engines_app.selectors.fleet_cache import data_version

    if connection.vendor != "sqlite":
        pytest.skip("PRAGMA data_version is SQLite's")
    Engine.objects.create(symbol="BTCUSDT")

    def version_and_queries():
        with CaptureQueriesContext(connection) as queries:
            version = data_version(reads_only=True)
        return version, [query["sql"] for query in queries]

    first, _ = read_fleet(version_and_queries)
    again, asked = read_fleet(version_and_queries)
    assert again == first and asked == ["PRAGMA data_version"]
    Engine.objects.update(updated_at=datetime(2030, 1, 1, tzinfo=UTC))  # committed elsewhere
    changed, asked = read_fleet(version_and_queries)
    assert changed != first and len(asked) == 3
