"""The dashboard and engine pages over HTTP, the PnL samples behind the chart, and the
broadcaster's reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from engines_app.models import Engine, EngineError, EnginePnlSample, EngineRestart
from engines_app.selectors import dashboard
from engines_app.services import engines as services
from engines_app.web.broadcaster import Broadcaster
from tests.helpers import heartbeat, hold

pytestmark = pytest.mark.django_db


@pytest.fixture
def engines() -> list[Engine]:
    """Three engines a live runner holds."""
    engines = [
        Engine.objects.create(symbol="BTCUSDT", status="running", total_pnl=12.5, daily_pnl=2.0),
        Engine.objects.create(symbol="ETHUSDT", status="crashed", last_error="boom"),
        Engine.objects.create(symbol="SOLUSDT", status="stopped", desired_state="stopped"),
    ]
    hold(engines)
    return engines


def client_for(*, control: bool = False) -> Client:
    user = get_user_model().objects.create_user("op", password="pw-op-12345")
    if control:
        user.user_permissions.add(Permission.objects.get(codename="control_engine"))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("path", ["/", "/engine/BTCUSDT/"])
def test_pages_need_a_login(engines, path):
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={path}"


def test_login_form_logs_in_and_goes_to_the_dashboard(engines):
    get_user_model().objects.create_user("op", password="pw-op-12345")
    client = Client(enforce_csrf_checks=True)
    client.get("/login/")
    token = client.cookies["csrftoken"].value
    form = {"username": "op", "password": "pw-op-12345", "csrfmiddlewaretoken": token}
    response = client.post("/login/", form)
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_dashboard_renders_the_snapshot(engines):
    response = client_for().get("/")
    assert response.status_code == 200
    snapshot = json.loads(
        response.content.decode()
        .split('<script id="snapshot" type="application/json">')[1]
        .split("</script>")[0]
    )
    assert [row["symbol"] for row in snapshot["engines"]] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    counts = snapshot["counts"]
    assert [counts[s] for s in ("total", "running", "crashed", "stopped")] == [3, 1, 1, 1]
    assert counts["backoff"] == counts["failed"] == 0
    assert b"canControl: false" in response.content
    assert counts["unknown"] == 0 and b'data-count="unknown"' in response.content
    assert {row["runner"] for row in snapshot["engines"]} == {"runner-a"}


def snapshot_of(response) -> dict:
    return json.loads(
        response.content.decode()
        .split('<script id="snapshot" type="application/json">')[1]
        .split("</script>")[0]
    )


def test_dashboard_counts_engines_of_a_silent_runner_as_unknown_and_lists_runners(engines):
    seen = timezone.now() - timedelta(seconds=30)
    heartbeat("runner-a", host="host-1", pid=11, held=3, engines=2, last_seen=seen)
    heartbeat("runner-b", host="host-2", pid=22, held=0)
    hold(engines, "runner-a", seconds=-15)
    response = client_for().get("/")
    snapshot = snapshot_of(response)
    counts = snapshot["counts"]
    assert (counts["running"], counts["crashed"], counts["unknown"], counts["stopped"]) == (
        0,
        0,
        2,
        1,
    )
    btc = snapshot["engines"][0]
    assert (btc["status"], btc["runner"], btc["started_at"]) == ("unknown", None, None)
    assert btc["runner_last_seen"] == round(seen.timestamp(), 3)
    runners = {r["name"]: r for r in snapshot["runners"]}
    assert (runners["runner-a"]["live"], runners["runner-b"]["live"]) == (False, True)
    assert (runners["runner-a"]["host"], runners["runner-a"]["pid"]) == ("host-1", 11)
    assert (runners["runner-a"]["held"], runners["runner-a"]["engines"]) == (3, 2)
    page = response.content.decode()
    assert 'id="runners"' in page and "<th>Runner</th>" in page


def test_dashboard_offers_control_to_the_permission_only(engines):
    assert b"canControl: true" in client_for(control=True).get("/").content


def test_dashboard_refuses_other_methods(engines):
    assert client_for().post("/").status_code == 405


@pytest.mark.parametrize("symbol", ["DOGEUSDT", "btc-usdt", "X" * 40])
def test_engine_page_of_an_unknown_or_malformed_symbol_is_404(engines, symbol):
    assert client_for().get(f"/engine/{symbol}/").status_code == 404


def test_engine_page_shows_history_log_and_pnl_chart(engines, settings, tmp_path):
    settings.LEVIPANEL = {**settings.LEVIPANEL, "LOG_DIR": tmp_path}
    btc = engines[0]
    now = datetime.now(UTC)
    EngineRestart.objects.create(
        engine=btc, at=now, reason="crashed: boom", attempt=2, backoff_seconds=120
    )
    EngineError.objects.create(
        engine=btc,
        at=now,
        type="InjectedCrash",
        message="kaboom",
        traceback="Traceback ...",
        crashed=True,
    )
    for minutes, total in [(30, -4.0), (20, 3.0), (10, 8.0)]:
        EnginePnlSample.objects.create(
            engine=btc, at=now - timedelta(minutes=minutes), daily_pnl=total, total_pnl=total
        )
    (tmp_path / "engine-BTCUSDT-20250101.jsonl").write_text('{"msg": "old day"}\n')
    lines = [
        json.dumps({"ts": f"t{i}", "level": "INFO", "symbol": "BTCUSDT", "msg": f"line {i}"})
        for i in range(150)
    ] + ["not json"]
    (tmp_path / "engine-BTCUSDT-20990101.jsonl").write_text("\n".join(lines) + "\n")

    page = client_for().get("/engine/BTCUSDT/").content.decode()
    assert "crashed: boom" in page and "120.0 s" in page
    assert "kaboom" in page and "Traceback ..." in page and "crash" in page
    assert "line 149" in page and "not json" in page
    assert "line 50</span>" not in page  # only the last 100 lines
    assert "old day" not in page  # the newest file only
    assert "4 points" in page  # three samples and the current value
    data = json.loads(page.split('<script id="pnl-data" type="application/json">')[1].split("<")[0])
    points = data["series"][0]["points"]
    assert [value for _, value in points] == [-4.0, 3.0, 8.0, btc.total_pnl]
    assert "vendor/uplot-1.6.32/uPlot.iife.min.js" in page
    times = [at for at, _ in points]
    assert times == sorted(times) and len(set(times)) == 4  # oldest first, for the time axis


def test_engine_page_shows_its_runner_and_the_truthful_status(engines):
    client = client_for()
    page = client.get("/engine/BTCUSDT/").content.decode()
    assert '<span class="badge running"' in page and '<b id="runner">runner-a</b>' in page
    hold(engines[:1], "runner-a", seconds=-1)  # the runner died a second ago
    page = client.get("/engine/BTCUSDT/").content.decode()
    assert '<span class="badge unknown"' in page and '<b id="runner">none</b>' in page


@pytest.fixture
def every_look_scans(monkeypatch) -> None:
    """The broadcaster's scans (leases run out, heartbeats grown old, rows deleted) on every
    look, not twice a second: these tests look several times within a second."""
    from engines_app.web import broadcaster as module

    monkeypatch.setattr(module, "SCAN_EVERY", timedelta(0))


def loaded(layer=None) -> Broadcaster:
    """A broadcaster after its first look, which loads the fleet and sends nothing."""
    broadcaster = Broadcaster(layer=layer, interval=0.2)
    assert broadcaster.changes() is None
    return broadcaster


def test_broadcaster_sends_only_the_changed_fields_and_removals(engines):
    broadcaster = loaded()
    _, rows, _ = broadcaster.state()
    assert [row["symbol"] for row in rows] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert broadcaster.changes() is None  # nothing new: nothing sent
    command = services.engine_stop(symbol="BTCUSDT")
    changed = broadcaster.changes()
    assert changed["engines"] == [{"symbol": "BTCUSDT", "desired_state": "stopped"}]
    assert [c["id"] for c in changed["commands"]] == [command.id]
    services.engine_remove(symbol="SOLUSDT")
    removed = broadcaster.changes()
    assert removed["removed"] == ["SOLUSDT"] and removed["engines"] == []
    assert [row["symbol"] for row in broadcaster.state()[1]] == ["BTCUSDT", "ETHUSDT"]
    assert broadcaster.changes() is None


def test_a_heartbeat_alone_sends_the_flush_time_not_the_rows(engines, every_look_scans):
    broadcaster = loaded()
    btc = Engine.objects.filter(symbol="BTCUSDT")
    beat = timezone.now()
    btc.update(last_heartbeat=beat)  # a beat alone: the runner leaves updated_at as it is
    flush = heartbeat("runner-a")  # and says when it flushed in its own row
    frame = broadcaster.changes()
    # Stale (no heartbeat yet) to fresh: the row says so once, with its heartbeat.
    assert frame["engines"] == [
        {"symbol": "BTCUSDT", "stale": False, "last_heartbeat": round(beat.timestamp(), 3)}
    ]
    assert frame["flushed_at"] == round(flush.last_seen.timestamp(), 3)
    later = beat + timedelta(seconds=1)
    btc.update(last_heartbeat=later, daily_pnl=2.004, updated_at=timezone.now())
    flush = heartbeat("runner-a")
    frame = broadcaster.changes()
    assert frame["engines"] == []  # the same cent, a newer heartbeat: only the flush time
    assert frame["flushed_at"] == round(flush.last_seen.timestamp(), 3)
    assert broadcaster.changes() is None
    with time_machine.travel(later + timedelta(seconds=11)):
        frame = broadcaster.changes()  # nothing wrote it: the heartbeat just got old
        assert broadcaster.changes() is None
    rows = {row["symbol"]: row for row in frame["engines"]}
    assert rows["BTCUSDT"] == {
        "symbol": "BTCUSDT",
        "stale": True,
        "last_heartbeat": round(later.timestamp(), 3),
    }


def test_an_engine_in_step_goes_stale_and_fresh_with_its_runners_row(engines, every_look_scans):
    """Its beats are its runner's ``beats_since``: nothing writes its own row meanwhile."""
    beat = timezone.now()
    heartbeat("runner-a", beats_since=beat)
    btc = Engine.objects.filter(symbol="BTCUSDT")
    btc.update(last_heartbeat=beat - timedelta(seconds=60), beats_with_runner=True)
    broadcaster = loaded()
    row = {r["symbol"]: r for r in broadcaster.state()[1]}["BTCUSDT"]
    assert row["stale"] is False and row["last_heartbeat"] == round(beat.timestamp(), 3)
    with time_machine.travel(beat + timedelta(seconds=11)):
        frame = broadcaster.changes()  # the runner wrote nothing for 11 s
    assert frame["engines"] == [
        {"symbol": "BTCUSDT", "stale": True, "last_heartbeat": round(beat.timestamp(), 3)}
    ]
    later = beat + timedelta(seconds=12)
    with time_machine.travel(later, tick=False):
        heartbeat("runner-a", beats_since=later)  # a flush: the runner carries the beat again
        frame = broadcaster.changes()
        assert broadcaster.changes() is None
    assert frame["engines"] == [
        {"symbol": "BTCUSDT", "stale": False, "last_heartbeat": round(later.timestamp(), 3)}
    ]


def test_broadcaster_sends_an_engine_added_in_full_and_notices_a_deleted_one(engines):
    broadcaster = loaded()
    Engine.objects.create(symbol="XRPUSDT", status="stopped")
    added = broadcaster.changes()
    assert [row["symbol"] for row in added["engines"]] == ["XRPUSDT"]
    assert set(added["engines"][0]) == set(dashboard.PAGE_FIELDS)
    Engine.objects.filter(symbol="ETHUSDT").delete()  # no command says so
    assert broadcaster.changes() is None  # the table is scanned twice a second, not each look
    with time_machine.travel(timezone.now() + timedelta(seconds=0.6)):
        assert broadcaster.changes()["removed"] == ["ETHUSDT"]


def test_broadcaster_sends_an_engine_whose_lease_ran_out_though_nothing_wrote_it(engines):
    """A killed runner writes nothing more: the broadcaster must notice the expiry itself."""
    broadcaster = loaded()
    assert broadcaster.changes() is None
    with time_machine.travel(timezone.now() + timedelta(seconds=16)):  # past the 15 s lease
        expired = broadcaster.changes()
        assert broadcaster.changes() is None  # sent once
    rows = {row["symbol"]: row for row in expired["engines"]}
    assert {symbol: row["status"] for symbol, row in rows.items()} == {
        "BTCUSDT": "unknown",
        "ETHUSDT": "unknown",  # SOLUSDT is stopped: still true, and not sent again
    }
    assert rows["BTCUSDT"]["runner"] is None


def test_broadcaster_sends_the_runners_when_one_joins_or_goes_silent(engines):
    broadcaster = loaded()
    heartbeat("runner-a", held=3)
    joined = broadcaster.changes()
    assert [(r["name"], r["live"], r["held"]) for r in joined["runners"]] == [("runner-a", True, 3)]
    assert joined["engines"] == []
    flush = heartbeat("runner-a", held=3)  # a flush: only last_seen moved
    frame = broadcaster.changes()  # the flush time alone, not the runners again
    assert (frame["runners"], frame["engines"]) == (None, [])
    assert frame["flushed_at"] == round(flush.last_seen.timestamp(), 3)
    assert broadcaster.changes() is None
    with time_machine.travel(timezone.now() + timedelta(seconds=16)):
        silent = broadcaster.changes()
    assert [(r["name"], r["live"]) for r in silent["runners"]] == [("runner-a", False)]


def test_a_large_change_goes_in_several_numbered_frames_that_add_up_to_it(engines, monkeypatch):
    from engines_app.web import broadcaster as module

    monkeypatch.setattr(module, "FRAME_ROWS", 2)
    broadcaster = loaded()
    seq = broadcaster.seq
    Engine.objects.update(error_count=7, updated_at=timezone.now())
    message = broadcaster.changes()
    parts = module.frames(message)
    assert [p["seq"] for p in parts] == [seq + 1, seq + 2] == [message["seq"], broadcaster.seq]
    assert [row for p in parts for row in p["engines"]] == message["engines"]
    assert len(message["engines"]) == 3
