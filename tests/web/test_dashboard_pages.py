"""The dashboard and engine pages over HTTP, the PnL samples behind the chart, and the
broadcaster's reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from engines_app.models import Engine, EngineError, EnginePnlSample, EngineRestart
from engines_app.services import engines as services
from engines_app.web.broadcaster import Broadcaster

pytestmark = pytest.mark.django_db


@pytest.fixture
def engines() -> list[Engine]:
    return [
        Engine.objects.create(symbol="BTCUSDT", status="running", total_pnl=12.5, daily_pnl=2.0),
        Engine.objects.create(symbol="ETHUSDT", status="crashed", last_error="boom"),
        Engine.objects.create(symbol="SOLUSDT", status="stopped", desired_state="stopped"),
    ]


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
    points = page.split('<polyline class="line" points="')[1].split('"')[0].split()
    assert len(points) == 4
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[0] == max(ys) and ys[-1] == min(ys)  # -4 lowest on screen, 12.5 highest


def test_broadcaster_sends_each_version_once_and_removals(engines):
    broadcaster = Broadcaster(layer=None, interval=0.2)
    first = broadcaster.changes()
    assert {row["symbol"] for row in first["engines"]} == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    assert broadcaster.changes() is None  # nothing new: nothing sent, one cheap query
    command = services.engine_stop(symbol="BTCUSDT")
    changed = broadcaster.changes()
    assert [row["symbol"] for row in changed["engines"]] == ["BTCUSDT"]
    assert changed["engines"][0]["desired_state"] == "stopped"
    assert [c["id"] for c in changed["commands"]] == [command.id]
    services.engine_remove(symbol="SOLUSDT")
    removed = broadcaster.changes()
    assert removed["removed"] == ["SOLUSDT"] and removed["engines"] == []
