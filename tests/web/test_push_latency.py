"""A change in the runner process reaches a dashboard websocket of the web process: on the
embedded default through the broadcaster's look at the database, with Redis through the
runner's hint. Real subprocesses (daphne, runengines), a real websocket client."""

from __future__ import annotations

import json
import time

import pytest

from benchmarks.push import collect, panel

SAMPLES = 10


def test_embedded_push_reaches_the_dashboard_within_a_second(tmp_path):
    with panel(tmp_path / "data") as site, site.dashboard() as socket_:
        assert [row["symbol"] for row in socket_.snapshot["engines"]] == ["BTCUSDT"]
        latencies = collect(socket_, samples=SAMPLES)
    assert len(latencies.values) == SAMPLES
    assert latencies.p95 < 1000, latencies.values


@pytest.mark.redis
def test_redis_hint_pushes_without_waiting_for_the_poll(tmp_path, redis_url):
    # The broadcaster looks only every 5 s on its own: pushes well under that came from
    # the runner's hint through channels_redis.
    with (
        panel(tmp_path / "data", redis_url=redis_url, push_interval=5.0) as site,
        site.dashboard() as socket_,
    ):
        latencies = collect(socket_, samples=SAMPLES)
    assert latencies.p95 < 150, latencies.values


@pytest.mark.redis
def test_redis_dashboard_and_its_hints_stay_up_while_nothing_changes(tmp_path, redis_url):
    # No hint for two of channels_redis's blocking pops (5 s each): the broadcaster's read
    # must wait, not time out (and drop hints while it listens again), and the page stays.
    with panel(tmp_path / "data", redis_url=redis_url, push_interval=5.0) as site:
        runner = site.processes[1]
        runner.terminate()
        runner.wait(10)
        with site.dashboard() as socket_:
            quiet_until = time.monotonic() + 11
            while time.monotonic() < quiet_until:
                try:
                    socket_.recv(timeout=quiet_until - time.monotonic())
                except TimeoutError:
                    break
            socket_.send(json.dumps({"type": "ping"}))
            assert json.loads(socket_.recv(timeout=5))["type"] == "pong"
            assert "dashboard hints unavailable" not in site.processes[0].log_path.read_text()
            # The runner back: its hints still wake the broadcaster (it looks every 5 s).
            site.wait_for_line(
                site.start("manage.py", "runengines", log_name="runner-again"),
                "LeviPanel engine runner ready",
            )
            latencies = collect(socket_, samples=SAMPLES)
    assert latencies.p95 < 1000, latencies.values


def test_dashboard_websocket_refuses_a_client_without_a_session(tmp_path):
    from websockets.exceptions import InvalidStatus

    with panel(tmp_path / "data") as site:
        with pytest.raises(InvalidStatus) as refused:
            with site.dashboard(session="not-a-session"):
                pass
    assert refused.value.response.status_code == 403
