"""/metrics: Prometheus text derived from the database, closed to strangers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from engines_app.models import (
    Alert,
    Engine,
    EngineRestart,
    Incident,
    PrunedRestarts,
    RunnerHeartbeat,
)
from engines_app.runtime.cyclestats import CycleHistogram
from tests.helpers import eventually_sync, samples

pytestmark = pytest.mark.django_db
TOKEN = "scrape-me"


def scrape(client: Client, **headers) -> dict:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return samples(response.content.decode())


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_IPS = None
    return {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}


@pytest.fixture
def fleet():
    """Three engines with restarts, errors, fills and PnL; one runner with a histogram."""
    now = datetime.now(UTC)
    btc = Engine.objects.create(
        symbol="BTCUSDT",
        status="running",
        last_heartbeat=now,
        error_count=4,
        trade_count=17,
        daily_pnl=-12.5,
        total_pnl=120.25,
        position=0.5,
    )
    eth = Engine.objects.create(
        symbol="ETHUSDT",
        status="backoff",
        error_count=2,
        trade_count=3,
        daily_pnl=1.5,
        total_pnl=-7.0,
    )
    Engine.objects.create(symbol="SOLUSDT", status="stopped")
    for engine, n in ((btc, 2), (eth, 3)):
        for attempt in range(1, n + 1):
            EngineRestart.objects.create(
                engine=engine, at=now, reason="crash", attempt=attempt, backoff_seconds=60
            )
    PrunedRestarts.objects.create(engine=btc, count=10)
    histogram = CycleHistogram(buckets=(0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.0005, 0.005, 0.05, 3.0):
        histogram.observe(seconds)
    RunnerHeartbeat.objects.create(
        name="runner-a",
        started_at=now,
        engines=1,
        last_seen=now - timedelta(seconds=5),
        cycle_histogram=histogram.snapshot(),
    )
    Alert.objects.create(key="BTCUSDT", kind="crashed", text="x", created_at=now, outcome="sent")
    Incident.objects.create(opened_at=now, symbols=["BTCUSDT"])
    return btc, eth


def test_metrics_parse_and_match_the_database(client, token, fleet):
    values = scrape(client, **token)
    for status in Engine.Status.values:
        expected = Engine.objects.filter(status=status).count()
        assert values[("levipanel_engines", (("status", status),))] == expected
    assert values[("levipanel_engines", (("status", "running"),))] == 1

    def per_engine(name: str, symbol: str) -> float:
        return values[(name, (("symbol", symbol),))]

    assert per_engine("levipanel_engine_restarts_total", "BTCUSDT") == 2 + 10  # rows + pruned
    assert per_engine("levipanel_engine_restarts_total", "ETHUSDT") == 3
    assert per_engine("levipanel_engine_restarts_total", "SOLUSDT") == 0
    for engine in Engine.objects.all():
        assert per_engine("levipanel_engine_errors_total", engine.symbol) == engine.error_count
        assert per_engine("levipanel_engine_fills_total", engine.symbol) == engine.trade_count
        assert per_engine("levipanel_engine_daily_pnl", engine.symbol) == engine.daily_pnl
        assert per_engine("levipanel_engine_total_pnl", engine.symbol) == engine.total_pnl
    assert per_engine("levipanel_engine_position", "BTCUSDT") == 0.5
    assert 0 <= per_engine("levipanel_engine_heartbeat_age_seconds", "BTCUSDT") < 5
    assert ("levipanel_engine_heartbeat_age_seconds", (("symbol", "ETHUSDT"),)) not in values

    runner = (("runner", "runner-a"),)
    assert 5 <= values[("levipanel_runner_heartbeat_age_seconds", runner)] < 10
    cycles = "levipanel_engine_cycle_duration_seconds"
    buckets = {
        le: values[(f"{cycles}_bucket", (("le", le), *runner))]
        for le in ("0.001", "0.01", "0.1", "+Inf")
    }
    assert buckets == {"0.001": 2, "0.01": 3, "0.1": 4, "+Inf": 5}
    assert values[(f"{cycles}_count", runner)] == 5
    assert values[(f"{cycles}_sum", runner)] == pytest.approx(3.056)
    assert values[("levipanel_alerts_total", (("kind", "crashed"), ("outcome", "sent")))] == 1
    assert values[("levipanel_incidents_open", ())] == 1


def test_a_degraded_engine_still_shows_its_heartbeat_age(client, token):
    """A silent feed degrades an engine that keeps cycling: a hang must still show."""
    beat = datetime.now(UTC) - timedelta(seconds=40)
    Engine.objects.create(symbol="XRPUSDT", status="degraded", last_heartbeat=beat)
    age = scrape(client, **token)[
        ("levipanel_engine_heartbeat_age_seconds", (("symbol", "XRPUSDT"),))
    ]
    assert 40 <= age < 45


def test_anonymous_and_wrong_tokens_are_refused(client, token, fleet):
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer nope"}, {"HTTP_AUTHORIZATION": TOKEN}):
        response = client.get("/metrics", **headers)
        assert response.status_code == 401
        assert response.json() == {"detail": "a valid bearer token is required"}
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_allowed_addresses(client, settings, fleet):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8", "192.168.1.7"]
    assert client.get("/metrics").status_code == 403  # 127.0.0.1 is not on the list
    scrape(client, REMOTE_ADDR="10.20.30.40")
    scrape(client, REMOTE_ADDR="192.168.1.7")
    refused = client.get("/metrics", REMOTE_ADDR="192.168.1.8")
    assert refused.status_code == 403 and "detail" in refused.json()


def test_token_or_allowed_address(client, settings, fleet):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    scrape(client, REMOTE_ADDR="10.0.0.1")
    scrape(client, REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 401


def test_closed_by_default_to_all_but_this_host(client, settings, fleet):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_IPS = None
    scrape(client)  # the test client is 127.0.0.1
    assert client.get("/metrics", REMOTE_ADDR="198.51.100.1").status_code == 403


def test_only_get(token):
    client = Client(enforce_csrf_checks=True)  # as a real client: no CSRF cookie
    for method in (client.post, client.put, client.delete):
        response = method("/metrics", **token)
        assert response.status_code == 405 and response.json() == {"detail": "use GET"}
        assert response["Allow"] == "GET, HEAD"


def test_an_empty_database_has_zeros_not_errors(client, token):
    values = scrape(client, **token)
    assert values[("levipanel_engines", (("status", "running"),))] == 0
    assert values[("levipanel_incidents_open", ())] == 0


def test_cycle_histogram_counts_each_bucket():
    histogram = CycleHistogram(buckets=(0.01, 0.1))
    for seconds in (0.001, 0.01, 0.05, 0.5):
        histogram.observe(seconds)
    snapshot = histogram.snapshot()
    assert snapshot["buckets"] == [0.01, 0.1] and snapshot["counts"] == [2, 1, 1]
    assert snapshot["sum"] == pytest.approx(0.561)
    assert histogram.count == 4


def test_a_real_runner_feeds_the_metrics(project):
    """Engines cycling in a real runner show up in the runner's heartbeat and /metrics."""
    project.env["LEVIPANEL_RUNNER_NAME"] = "runner-m"
    project.manage(
        "shell",
        "-c",
        "from engines_app.models import Engine; "
        "[Engine.objects.create(symbol=s, cycle_interval=0.02) "
        "for s in ('BTCUSDT', 'ETHUSDT')]",
    )
    project.start("manage.py", "runengines", "--symbols", "BTCUSDT", "ETHUSDT", log_name="run")
    render = "from engines_app.web.metrics import render; print(render().decode())"

    def cycled():
        values = samples(project.manage("shell", "-v", "0", "-c", render).stdout)
        count = values.get(
            ("levipanel_engine_cycle_duration_seconds_count", (("runner", "runner-m"),)), 0
        )
        return values if count >= 20 else None

    values = eventually_sync(cycled, timeout=20, interval=0.3, message="no cycles in /metrics")
    assert values[("levipanel_engines", (("status", "running"),))] == 2
    assert values[("levipanel_runner_heartbeat_age_seconds", (("runner", "runner-m"),))] < 5
