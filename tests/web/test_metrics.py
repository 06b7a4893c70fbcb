"""/metrics: Prometheus text derived from the database, closed to strangers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
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
from engines_app.testing import Installation, free_port
from tests.helpers import eventually_sync, heartbeat, hold, samples

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
    """Three engines with restarts, errors, fills and PnL; one runner holding them, with a
    histogram."""
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
        held=3,
        last_seen=now - timedelta(seconds=5),
        cycle_histogram=histogram.snapshot(),
    )
    hold(Engine.objects.all(), "runner-a")
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
    assert values[("levipanel_runner_engines", runner)] == 3
    assert values[("levipanel_engines", (("status", "unknown"),))] == 0


def test_engines_of_a_silent_runner_count_as_unknown(client, token, fleet):
    """Killed -9, the runner left its rows saying running and backoff: not believed."""
    heartbeat("runner-a", last_seen=datetime.now(UTC) - timedelta(seconds=40))
    hold(Engine.objects.all(), "runner-a", seconds=-25)
    values = scrape(client, **token)

    def engines(status: str) -> float:
        return values[("levipanel_engines", (("status", status),))]

    assert (engines("running"), engines("backoff"), engines("stopped")) == (0, 0, 1)
    assert engines("unknown") == 2
    # Its heartbeat age keeps growing, for the alert rules that watch it.
    assert ("levipanel_engine_heartbeat_age_seconds", (("symbol", "BTCUSDT"),)) in values
    assert ("levipanel_runner_engines", (("runner", "runner-a"),)) not in values


def test_engines_held_per_live_runner(client, token, fleet):
    heartbeat("runner-b", held=5)
    heartbeat("runner-c", held=4, stopped_at=datetime.now(UTC))  # stopped on a signal
    values = scrape(client, **token)
    held = {
        labels[0][1]: value
        for (name, labels), value in values.items()
        if name == "levipanel_runner_engines"
    }
    assert held == {"runner-a": 3, "runner-b": 5}


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


@pytest.fixture
def internal(settings):
    """Scrapers on 10.0.0.0/8 only, no token: the address decides."""
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    settings.TRUSTED_PROXIES = []
    return settings


def test_forwarded_headers_from_an_untrusted_peer_are_not_believed(client, internal, fleet):
    for header in ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP"):
        forged = client.get("/metrics", REMOTE_ADDR="203.0.113.9", **{header: "10.1.2.3"})
        assert forged.status_code == 403  # judged by the peer, 203.0.113.9
    scrape(client, REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="203.0.113.9")


def test_a_peer_rewritten_from_the_forwarded_header_is_not_believed(client, internal, fleet):
    """daphne --proxy-headers puts the header's address in REMOTE_ADDR: a client that names
    an allowed address in X-Forwarded-For must not become it."""
    forged = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="10.1.2.3")
    assert forged.status_code == 403


def test_a_trusted_proxy_forwards_the_rightmost_untrusted_address(client, internal, fleet):
    internal.TRUSTED_PROXIES = ["127.0.0.1", "172.16.0.0/12"]
    via = {"REMOTE_ADDR": "127.0.0.1"}
    scrape(client, **via, HTTP_X_FORWARDED_FOR="10.1.2.3")
    scrape(client, **via, HTTP_X_FORWARDED_FOR="203.0.113.5, 10.1.2.3, 172.16.0.9")
    # Entries left of the client's are whatever the client sent: not believed.
    for chain in ("10.1.2.3, 203.0.113.5", "10.1.2.3, not-an-address", ""):
        refused = client.get("/metrics", **via, HTTP_X_FORWARDED_FOR=chain)
        assert refused.status_code == 403, chain


def test_behind_a_local_proxy_the_world_is_not_this_host(client, settings, fleet):
    """Loopback may scrape by default, but not everyone a trusted local proxy forwards."""
    settings.METRICS_TOKEN, settings.METRICS_ALLOWED_IPS = "", None
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    forwarded = client.get("/metrics", HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert forwarded.status_code == 403
    assert client.get("/metrics").status_code == 403  # from the proxy, saying for whom: no


def test_a_panel_served_to_other_hosts_needs_the_token_even_from_loopback(client, settings, fleet):
    settings.METRICS_TOKEN, settings.METRICS_ALLOWED_IPS = "", None
    settings.METRICS_TOKEN_REQUIRED = True  # DJANGO_ALLOWED_HOSTS names a public host
    refused = client.get("/metrics")
    assert refused.status_code == 403
    assert refused.json() == {"detail": "set METRICS_TOKEN to read the metrics"}
    settings.METRICS_TOKEN = TOKEN
    scrape(client, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")


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


def test_daphne_proxy_headers_cannot_forge_an_allowed_address(tmp_path):
    """Under ``daphne --proxy-headers`` the peer is taken from X-Forwarded-For: a client on
    this host naming an allowed address is still refused."""
    env = {"METRICS_ALLOWED_IPS": "10.0.0.0/8", "METRICS_TOKEN": ""}
    with Installation(tmp_path / "data", env) as installation:
        installation.migrate()
        port = str(free_port())
        installation.port = int(port)
        daphne = ["-m", "daphne", "--proxy-headers", "-b", "127.0.0.1", "-p", port]
        web = installation.start(*daphne, "levipanel.asgi:application", log_name="web")
        installation.wait_for_line(web, "Listening on TCP address")
        forged = httpx.get(f"{installation.url}/metrics", headers={"X-Forwarded-For": "10.9.9.9"})

    assert forged.status_code == 403


def test_an_engine_in_step_shows_the_age_of_its_runners_beat(client, token):
    now = datetime.now(UTC)
    engine = Engine.objects.create(
        symbol="XRPUSDT",
        status="running",
        last_heartbeat=now - timedelta(seconds=40),
        beats_with_runner=True,
    )
    hold([engine], "runner-a")
    heartbeat("runner-a", beats_since=now - timedelta(seconds=3))
    age = scrape(client, **token)[
        ("levipanel_engine_heartbeat_age_seconds", (("symbol", "XRPUSDT"),))
    ]
    assert 3 <= age < 6
