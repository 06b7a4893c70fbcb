"""GET /engines/status: one answer per data version, its ETag and 304, and the filters
and pages over it, with the fleet's counts kept."""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from engines_app.models import Engine, EngineCommand
from engines_app.runner import store
from engines_app.selectors import fleet_cache
from engines_app.selectors.engines import STATUSES
from engines_app.testing import Installation
from tests.helpers import bearer, heartbeat, hold, make_user

pytestmark = pytest.mark.django_db

# Seven engines a live runner holds: three running, two crashed, one stopped, one failed.
FLEET = {
    "AAAUSDT": "running",
    "ABCUSDT": "running",
    "ABDUSDT": "crashed",
    "BTCUSDT": "running",
    "ETHUSDT": "crashed",
    "SOLUSDT": "stopped",
    "XRPUSDT": "failed",
}


@pytest.fixture
def fleet(db):
    now = datetime.now(UTC)
    engines = [
        Engine.objects.create(symbol=symbol, status=status, started_at=now, last_heartbeat=now)
        for symbol, status in FLEET.items()
    ]
    heartbeat("runner-a")
    hold(engines, "runner-a")
    return engines


@pytest.fixture
def token(django_user_model) -> dict[str, str]:
    return bearer(make_user(django_user_model, "operator", control=True))


def get(client, token, url: str = "/engines/status", **headers):
    return client.get(url, **token, **headers)


def symbols(response) -> list[str]:
    return [engine["symbol"] for engine in response.json()["engines"]]


def rows_read(queries) -> int:
    """How many times the engines' status columns were read (a snapshot built)."""
    return sum('"last_heartbeat"' in query["sql"] for query in queries)


# ETag and 304 --------------------------------------------------------------------------


def test_the_answer_has_a_strong_etag_and_a_304_needs_no_body(client, fleet, token):
    first = get(client, token)
    etag = first["ETag"]
    assert first.status_code == 200 and etag.startswith('"') and etag.endswith('"')
    assert first["Cache-Control"] == "private, no-cache"
    again = get(client, token, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    assert again.content == b"" and again["ETag"] == etag
    other = get(client, token, HTTP_IF_NONE_MATCH='"something-else"')
    assert other.status_code == 200 and other.content == first.content


def test_if_none_match_takes_a_list_a_weak_tag_and_a_star(client, fleet, token):
    etag = get(client, token)["ETag"]
    for sent in (f'"other", {etag}', f"W/{etag}", "*"):
        assert get(client, token, HTTP_IF_NONE_MATCH=sent).status_code == 304, sent
    # Other preconditions are not this endpoint's: the answer is the usual one.
    assert get(client, token, HTTP_IF_MATCH='"other"').status_code == 200


def test_the_snapshot_is_built_once_and_served_to_every_client(client, fleet, token, operator2):
    with CaptureQueriesContext(connection) as queries:
        first = get(client, token)
        second = get(client, operator2)
    assert first.content == second.content and first["ETag"] == second["ETag"]
    assert rows_read(queries.captured_queries) == 1


@pytest.fixture
def one_snapshot(monkeypatch):
    """Snapshots live a minute: requests a test compares are answered from one."""
    monkeypatch.setattr(fleet_cache, "MAX_AGE", 60.0)


def test_the_whole_list_is_gzipped_for_a_client_that_takes_it(client, fleet, token, one_snapshot):
    plain = get(client, token)
    packed = get(client, token, HTTP_ACCEPT_ENCODING="br, gzip, deflate")
    assert "Content-Encoding" not in plain and plain["Vary"] == "Accept-Encoding"
    assert packed["Content-Encoding"] == "gzip" and packed["Vary"] == "Accept-Encoding"
    assert gzip.decompress(packed.content) == plain.content
    # The same representation's data: the gzipped one's tag is the plain one's, made weak
    # (as Django's GZipMiddleware does), and either sent back is a 304.
    assert packed["ETag"] == f"W/{plain['ETag']}"
    for sent in (plain["ETag"], packed["ETag"]):
        again = get(client, token, HTTP_ACCEPT_ENCODING="gzip", HTTP_IF_NONE_MATCH=sent)
        assert again.status_code == 304 and again.content == b"", sent
        assert "Content-Encoding" not in again and again["ETag"] == packed["ETag"]


@pytest.mark.parametrize(
    ("accept", "gzipped"),
    [
        ("gzip", True),
        ("deflate, GZIP;q=0.5", True),
        ("*", True),
        ("x-gzip", True),
        ("gzip;q=0", False),
        ("gzip;q=0.0, identity", False),
        ("*, gzip;q=0", False),
        ("*;q=0", False),
        ("identity", False),
        ("br, deflate", False),
        ("gzip;q=bad", False),
        ("", False),
    ],
)
def test_gzip_is_sent_only_when_accept_encoding_takes_it(
    client, fleet, token, one_snapshot, accept, gzipped
):
    response = get(client, token, HTTP_ACCEPT_ENCODING=accept)
    assert response.status_code == 200
    assert (response.get("Content-Encoding") == "gzip") is gzipped, accept
    assert response["ETag"].startswith("W/") is gzipped


def test_the_gzipped_list_is_made_once_a_snapshot(client, fleet, token, monkeypatch, one_snapshot):
    made = []
    compress = gzip.compress
    monkeypatch.setattr(
        "engines_app.selectors.fleet_cache.gzip.compress",
        lambda *args, **kwargs: made.append(1) or compress(*args, **kwargs),
    )
    first = get(client, token, HTTP_ACCEPT_ENCODING="gzip")
    assert get(client, token, HTTP_ACCEPT_ENCODING="gzip").content == first.content
    assert len(made) == 1
    assert client.post("/engines/stop/BTCUSDT", **token).status_code == 202
    changed = get(client, token, HTTP_ACCEPT_ENCODING="gzip")
    assert len(made) == 2 and changed["ETag"] != first["ETag"]
    engines = json.loads(gzip.decompress(changed.content))["engines"]
    assert next(e for e in engines if e["symbol"] == "BTCUSDT")["desired_state"] == "stopped"


def test_a_filtered_page_is_not_gzipped(client, fleet, token):
    page = get(client, token, "/engines/status?status=running", HTTP_ACCEPT_ENCODING="gzip")
    assert page.status_code == 200 and "Content-Encoding" not in page and "Vary" not in page
    assert symbols(page) == ["AAAUSDT", "ABCUSDT", "BTCUSDT"]
    assert not page["ETag"].startswith("W/")


@pytest.fixture
def operator2(django_user_model) -> dict[str, str]:
    return bearer(make_user(django_user_model, "viewer"))


def test_a_runner_write_changes_the_answer_at_once(client, fleet, token):
    etag = get(client, token)["ETag"]
    btc = Engine.objects.get(symbol="BTCUSDT")
    row = store.HeartbeatRow(
        id=btc.id,
        last_heartbeat=time.time(),
        error_count=0,
        last_error=None,
        position=2.5,
        daily_pnl=1.0,
        total_pnl=3.0,
        trade_count=4,
    )
    store.write(statuses=[], errors=[], restarts=[], heartbeats=[row])
    after = get(client, token, HTTP_IF_NONE_MATCH=etag)
    assert after.status_code == 200 and after["ETag"] != etag
    engine = next(e for e in after.json()["engines"] if e["symbol"] == "BTCUSDT")
    assert (engine["position"], engine["trade_count"]) == (2.5, 4)


def test_a_runner_status_write_changes_the_counts(client, fleet, token):
    etag = get(client, token)["ETag"]
    eth = Engine.objects.get(symbol="ETHUSDT")
    row = store.StatusRow(
        id=eth.id,
        status="running",
        reason="",
        started_at=time.time(),
        attempt=0,
        budget_left=None,
        next_retry_at=None,
        error_count=0,
        last_error=None,
    )
    store.write(statuses=[row], errors=[], restarts=[], heartbeats=[])
    body = get(client, token, HTTP_IF_NONE_MATCH=etag).json()
    assert (body["running"], body["crashed"]) == (4, 1)


def test_an_operator_write_changes_the_answer_at_once(client, fleet, token):
    before = get(client, token)
    assert client.post("/engines/stop/BTCUSDT", **token).status_code == 202
    after = get(client, token, HTTP_IF_NONE_MATCH=before["ETag"])
    assert after.status_code == 200
    engine = next(e for e in after.json()["engines"] if e["symbol"] == "BTCUSDT")
    assert engine["desired_state"] == "stopped"


def test_a_lease_running_out_shows_unknown_with_no_write(client, fleet, token):
    """Nothing is written when a runner dies: the lease just runs out."""
    hold(fleet, "runner-a", seconds=0.5)
    before = get(client, token)
    assert before.json()["running"] == 3
    time.sleep(0.7)  # less than a snapshot's longest life: the expiry itself ends it
    after = get(client, token, HTTP_IF_NONE_MATCH=before["ETag"])
    assert after.status_code == 200
    body = after.json()
    assert (body["running"], body["crashed"], body["unknown"]) == (0, 0, 5)
    assert {e["runner"] for e in body["engines"]} == {None}


def test_a_renewed_lease_shows_running_again(client, fleet, token):
    """A runner back from an outage renews its leases without stamping the rows."""
    hold(fleet, "runner-a", seconds=-1)
    assert get(client, token).json()["unknown"] == 5
    hold(fleet, "runner-a", seconds=15)
    assert get(client, token).json()["running"] == 3


def test_a_new_and_a_deleted_engine_change_the_answer(client, fleet, token):
    etag = get(client, token)["ETag"]
    Engine.objects.create(symbol="DOGEUSDT")
    added = get(client, token, HTTP_IF_NONE_MATCH=etag)
    assert added.status_code == 200 and added.json()["total"] == 8
    Engine.objects.filter(symbol="DOGEUSDT").delete()
    assert get(client, token, HTTP_IF_NONE_MATCH=added["ETag"]).json()["total"] == 7


def test_a_runner_heartbeat_changes_when_it_was_last_seen(client, fleet, token):
    first = get(client, token).json()["engines"][0]["runner_last_seen"]
    time.sleep(0.01)
    beat = heartbeat("runner-a")
    second = get(client, token).json()["engines"][0]["runner_last_seen"]
    assert second == round(beat.last_seen.timestamp(), 3) != first


def test_ages_are_never_older_than_a_snapshots_life(client, fleet, token, monkeypatch):
    from engines_app.selectors import fleet_cache

    monkeypatch.setattr(fleet_cache, "MAX_AGE", 0.2)
    first = get(client, token)
    time.sleep(0.3)
    second = get(client, token)
    assert second["ETag"] != first["ETag"]
    age = [e["heartbeat_age_seconds"] for e in (r.json()["engines"][0] for r in (first, second))]
    assert age[1] >= age[0] + 0.25


# Filters and pages -----------------------------------------------------------------------


def test_no_parameters_is_the_whole_fleet_in_the_guides_shape(client, fleet, token):
    body = get(client, token).json()
    assert body["total"] == body["matched"] == 7
    assert set(STATUSES) <= set(body) and "page" not in body
    assert symbols(get(client, token)) == sorted(FLEET)


def test_filter_by_status_keeps_the_fleets_counts(client, fleet, token):
    response = get(client, token, "/engines/status?status=crashed")
    body = response.json()
    assert symbols(response) == ["ABDUSDT", "ETHUSDT"]
    assert (body["total"], body["running"], body["crashed"], body["matched"]) == (7, 3, 2, 2)
    several = get(client, token, "/engines/status?status=crashed,failed")
    assert symbols(several) == ["ABDUSDT", "ETHUSDT", "XRPUSDT"]


def test_filter_by_symbol_is_a_prefix_in_any_case(client, fleet, token):
    assert symbols(get(client, token, "/engines/status?symbol=AB")) == ["ABCUSDT", "ABDUSDT"]
    assert symbols(get(client, token, "/engines/status?symbol=ab")) == ["ABCUSDT", "ABDUSDT"]
    assert symbols(get(client, token, "/engines/status?symbol=USDT")) == []
    both = get(client, token, "/engines/status?symbol=A&status=running")
    assert symbols(both) == ["AAAUSDT", "ABCUSDT"] and both.json()["matched"] == 2


def test_pages_keep_the_totals(client, fleet, token):
    response = get(client, token, "/engines/status?page=2&page_size=3")
    body = response.json()
    assert symbols(response) == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert (body["page"], body["page_size"], body["matched"], body["total"]) == (2, 3, 7, 7)
    assert (body["running"], body["crashed"], body["stopped"], body["failed"]) == (3, 2, 1, 1)
    assert symbols(get(client, token, "/engines/status?page=3&page_size=3")) == ["XRPUSDT"]
    assert symbols(get(client, token, "/engines/status?page=4&page_size=3")) == []
    default = get(client, token, "/engines/status?page=1").json()
    assert (default["page_size"], len(default["engines"])) == (50, 7)
    filtered = get(client, token, "/engines/status?status=running&page=2&page_size=2")
    assert symbols(filtered) == ["BTCUSDT"] and filtered.json()["matched"] == 3


def test_a_filtered_page_has_its_own_etag_and_304(client, fleet, token):
    url = "/engines/status?status=running&page=1&page_size=2"
    first = get(client, token, url)
    assert first["ETag"] != get(client, token)["ETag"]
    assert get(client, token, url, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 304
    Engine.objects.filter(symbol="AAAUSDT").update(status="crashed", updated_at=datetime.now(UTC))
    changed = get(client, token, url, HTTP_IF_NONE_MATCH=first["ETag"])
    assert changed.status_code == 200 and symbols(changed) == ["ABCUSDT", "BTCUSDT"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=sleeping", "unknown status 'sleeping': use "),
        ("status=running,nope", "unknown status 'nope'"),
        ("status=", "unknown status ''"),
        ("status=RUNNING", "unknown status 'RUNNING'"),
        ("symbol=BTC-USD", "symbol must be 1 to 20 letters or digits"),
        ("symbol=", "symbol must be 1 to 20 letters or digits"),
        ("symbol=" + "A" * 21, "symbol must be 1 to 20 letters or digits"),
        ("page=0", "page must be >= 1"),
        ("page_size=501", "page_size from 1 to 500"),
        ("page=1000001", "page must be >= 1 (at most 1000000)"),
        ("page=x", "page"),
    ],
)
def test_a_bad_parameter_is_a_400_saying_why_and_changes_nothing(
    client, fleet, token, query, message
):
    before = list(Engine.objects.order_by("pk").values())
    response = get(client, token, f"/engines/status?{query}")
    assert response.status_code == 400
    assert message in response.json()["detail"]
    if query.startswith("status=s"):
        assert ",".join(STATUSES) in response.json()["detail"]
    assert list(Engine.objects.order_by("pk").values()) == before
    assert not EngineCommand.objects.exists()


# Who may ask ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/engines/status", "/engines/status?status=running&page=1"])
def test_no_credentials_is_a_401_even_with_a_matching_etag(client, fleet, token, url):
    etag = get(client, token, url)["ETag"]
    response = client.get(url, HTTP_IF_NONE_MATCH=etag)
    assert response.status_code == 401 and "ETag" not in response
    bad = client.get(url, HTTP_IF_NONE_MATCH=etag, HTTP_AUTHORIZATION="Bearer lvp_" + "x" * 43)
    assert bad.status_code == 401


def test_a_reader_without_control_may_read(client, fleet, operator2):
    assert client.get("/engines/status?status=running", **operator2).status_code == 200


def test_the_schema_documents_the_parameters_and_the_304(client):
    operation = client.get("/openapi.json").json()["paths"]["/engines/status"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {
        "status",
        "symbol",
        "page",
        "page_size",
    }
    assert {"200", "304", "400", "401"} <= set(operation["responses"])


# PostgreSQL ----------------------------------------------------------------------------------

VERSIONS = """
import json, time
from datetime import datetime, UTC
from engines_app.models import Engine
from engines_app.selectors.fleet_cache import data_version, fleet_snapshot
Engine.objects.create(symbol="BTCUSDT", status="running")
first = fleet_snapshot()
same = fleet_snapshot()
Engine.objects.filter(symbol="BTCUSDT").update(position=1.0, updated_at=datetime.now(UTC))
changed = fleet_snapshot()
print(json.dumps([first is same, changed.version != first.version,
                  changed.engines[0]["position"]]))
"""


def test_the_data_version_on_postgresql(postgres_database, tmp_path):
    with Installation(tmp_path / "data", {"DATABASE_URL": postgres_database}) as installation:
        done = installation.manage("shell", "-c", VERSIONS)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True, True, 1.0]


# Another process writes -------------------------------------------------------------------

SETUP = """
from django.contrib.auth import get_user_model
from engines_app.api.tokens import api_token_create
from engines_app.models import Engine
Engine.objects.bulk_create([Engine(symbol=s) for s in ("BTCUSDT", "ETHUSDT")])
print(api_token_create(user=get_user_model().objects.create_user("reader"), name="t")[1])
"""


def write_as_a_runner(project, symbol: str, position: float) -> None:
    """What a runner's flush does to a row, from a connection of its own: the values and a
    new ``updated_at``, committed."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with closing(sqlite3.connect(project.data_dir / "levipanel.sqlite3", timeout=20)) as db, db:
        db.execute(
            "UPDATE engines_app_engine SET position = ?, updated_at = ? WHERE symbol = ?",
            (position, stamp, symbol),
        )


def test_a_write_by_another_process_is_seen_by_the_next_request(project):
    """The web server's snapshot, and a write from another connection at once after it
    (well within the snapshot's ``MAX_AGE``)."""
    import httpx

    key = project.manage("shell", "-c", SETUP).stdout.split()[-1]
    project.serve()
    with httpx.Client(base_url=project.url, headers={"Authorization": f"Bearer {key}"}) as http:
        etag = http.get("/engines/status").headers["ETag"]
        assert http.get("/engines/status", headers={"If-None-Match": etag}).status_code == 304
        write_as_a_runner(project, "ETHUSDT", 7.0)
        after = http.get("/engines/status", headers={"If-None-Match": etag})
    assert after.status_code == 200
    assert [e["position"] for e in after.json()["engines"]] == [None, 7.0]


def test_a_flush_that_moved_only_the_runners_row_is_shown_without_reading_the_engines_again(
    client, fleet, token
):
    """A fleet in step: each flush writes the runner's row alone. The next answer works
    the beats out anew from the engine rows already read; an engine write is read."""
    now = datetime.now(UTC)
    Engine.objects.filter(symbol="BTCUSDT").update(beats_with_runner=True)
    heartbeat("runner-a", beats_since=now - timedelta(seconds=2))
    first = get(client, token)
    heartbeat("runner-a", beats_since=now)
    with CaptureQueriesContext(connection) as queries:
        after = get(client, token, HTTP_IF_NONE_MATCH=first["ETag"])
    assert after.status_code == 200 and rows_read(queries.captured_queries) == 0
    btc = next(e for e in after.json()["engines"] if e["symbol"] == "BTCUSDT")
    assert btc["last_heartbeat"] == pytest.approx(now.timestamp())
    Engine.objects.filter(symbol="ETHUSDT").update(position=3.0, updated_at=datetime.now(UTC))
    heartbeat("runner-a", beats_since=now + timedelta(seconds=1))
    with CaptureQueriesContext(connection) as queries:
        written = get(client, token)
    assert rows_read(queries.captured_queries) == 1
    eth = next(e for e in written.json()["engines"] if e["symbol"] == "ETHUSDT")
    assert eth["position"] == 3.0


def test_an_engine_write_landing_while_the_runners_rows_are_read_is_in_the_answer(
    client, fleet, token, monkeypatch
):
    """The engine rows are used again only if they are still the database's after the
    runners' rows were read."""
    from engines_app.selectors import fleet_cache

    get(client, token)
    heartbeat("runner-a", beats_since=datetime.now(UTC))  # only the runner's row moved
    read_runners = fleet_cache.runners_seen

    def then_a_write():
        seen = read_runners()
        Engine.objects.filter(symbol="ETHUSDT").update(position=5.0, updated_at=datetime.now(UTC))
        return seen

    monkeypatch.setattr(fleet_cache, "runners_seen", then_a_write)
    eth = next(e for e in get(client, token).json()["engines"] if e["symbol"] == "ETHUSDT")
    assert eth["position"] == 5.0


def test_an_engine_in_step_shows_its_runners_beat_and_a_flush_changes_the_answer(
    client, fleet, token
):
    """Beats in step with the flushes are the runner's ``beats_since``: its row alone moves."""
    now = datetime.now(UTC)
    stored = now - timedelta(seconds=60)
    Engine.objects.filter(symbol="BTCUSDT").update(
        last_heartbeat=stored, last_tick_at=stored, beats_with_runner=True
    )
    Engine.objects.filter(symbol="AAAUSDT").update(last_heartbeat=stored, last_tick_at=stored)
    heartbeat("runner-a", beats_since=now - timedelta(seconds=2))
    first = get(client, token)
    by_symbol = {e["symbol"]: e for e in first.json()["engines"]}
    one = get(client, token, "/engines/status/BTCUSDT").json()
    for btc in (by_symbol["BTCUSDT"], one):
        assert btc["last_heartbeat"] == pytest.approx((now - timedelta(seconds=2)).timestamp())
        assert 2 <= btc["heartbeat_age_seconds"] < 4
        assert 2 <= btc["last_tick_age_seconds"] < 4
    assert by_symbol["AAAUSDT"]["heartbeat_age_seconds"] >= 60  # not in step: its own
    heartbeat("runner-a", beats_since=now)  # the next flush: no engine row written
    after = get(client, token, HTTP_IF_NONE_MATCH=first["ETag"])
    assert after.status_code == 200
    btc = next(e for e in after.json()["engines"] if e["symbol"] == "BTCUSDT")
    assert btc["last_heartbeat"] == pytest.approx(now.timestamp())
