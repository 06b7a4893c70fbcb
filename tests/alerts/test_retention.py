"""Retention removes exactly the history and log files older than RETENTION_DAYS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django_q.tasks import async_task, result

from engines_app.jobs.retention import run_retention
from engines_app.models import (
    Alert,
    Engine,
    EngineCommand,
    EngineError,
    EnginePnlSample,
    EngineRestart,
    Incident,
    PrunedRestarts,
    RunnerHeartbeat,
)
from engines_app.web.metrics import render
from tests.helpers import samples

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 20, 15, 30, tzinfo=UTC)
OLD = NOW - timedelta(days=8)  # RETENTION_DAYS is 7 here
NEW = NOW - timedelta(days=6, hours=23)


@pytest.fixture
def log_dir(settings, tmp_path):
    settings.RETENTION_DAYS = 7
    settings.LEVIPANEL = {**settings.LEVIPANEL, "LOG_DIR": tmp_path / "logs"}
    (tmp_path / "logs").mkdir()
    return tmp_path / "logs"


def history(engine: Engine, at: datetime, tag: str) -> None:
    """One row of each kind retention looks at, dated ``at``."""
    EngineRestart.objects.create(engine=engine, at=at, reason=tag, attempt=1, backoff_seconds=60)
    EngineError.objects.create(engine=engine, at=at, type="InjectedCrash", message=tag)
    done = EngineCommand.objects.create(
        engine=engine,
        symbol=engine.symbol,
        action="start",
        message=tag,
        acked_at=at,
        outcome="done",
    )
    EngineCommand.objects.filter(id=done.id).update(created_at=at)
    Alert.objects.create(key=engine.symbol, kind="crashed", text=tag, created_at=at)
    Incident.objects.create(opened_at=at, resolved_at=at, symbols=[engine.symbol])
    RunnerHeartbeat.objects.create(name=f"runner-{tag}", started_at=at, last_seen=at)
    EnginePnlSample.objects.create(engine=engine, at=at, daily_pnl=1.0, total_pnl=1.0)


def test_retention_removes_exactly_the_old_rows_and_files(log_dir):
    btc = Engine.objects.create(symbol="BTCUSDT")
    history(btc, OLD, "old")
    history(btc, NEW, "new")
    pending = EngineCommand.objects.create(engine=btc, symbol="BTCUSDT", action="stop")
    EngineCommand.objects.filter(id=pending.id).update(created_at=OLD)  # not carried out yet
    Incident.objects.create(opened_at=OLD, symbols=["BTCUSDT"])  # still open
    names = [
        "engine-BTCUSDT-20260311.jsonl",  # a whole day before the cutoff
        "engine-runner-20260312.jsonl",  # the day ended 2026-03-13 00:00 < cutoff 15:30
        "engine-BTCUSDT-20260313.jsonl",  # the cutoff falls inside this day: kept
        "engine-ETHUSDT-20260320.jsonl",  # today
        "engine-BTCUSDT-notadate.jsonl",
        "notes-20200101.txt",
    ]
    for name in names:
        (log_dir / name).write_text('{"msg": "x"}\n')

    with time_machine.travel(NOW, tick=False):
        report = run_retention()

    assert report == {
        "restarts": 1,
        "errors": 1,
        "commands": 1,
        "alerts": 1,
        "incidents": 1,
        "runners": 1,
        "pnl_samples": 1,  # kept a week, whatever RETENTION_DAYS says
        "log_files": 2,
    }
    assert sorted(p.name for p in log_dir.iterdir()) == sorted(names[2:])
    for model, field in ((EngineRestart, "reason"), (EngineError, "message"), (Alert, "text")):
        assert list(model.objects.values_list(field, flat=True)) == ["new"]
    assert set(EngineCommand.objects.values_list("message", flat=True)) == {"new", ""}
    assert EngineCommand.objects.filter(id=pending.id).exists()
    assert Incident.objects.filter(resolved_at=None).count() == 1
    assert list(RunnerHeartbeat.objects.values_list("name", flat=True)) == ["runner-new"]
    assert list(EnginePnlSample.objects.values_list("at", flat=True)) == [NEW]


def test_the_restart_counter_survives_retention(log_dir):
    btc = Engine.objects.create(symbol="BTCUSDT")
    for at in (OLD, OLD, NEW):
        EngineRestart.objects.create(engine=btc, at=at, reason="x", attempt=1, backoff_seconds=1)

    def counter() -> float:
        values = samples(render().decode())
        return values[("levipanel_engine_restarts_total", (("symbol", "BTCUSDT"),))]

    assert counter() == 3
    with time_machine.travel(NOW, tick=False):
        assert run_retention()["restarts"] == 2
        assert run_retention()["restarts"] == 0  # nothing counted twice
    assert PrunedRestarts.objects.get(engine=btc).count == 2
    assert counter() == 3


def test_retention_runs_as_a_task_and_reports(log_dir, monkeypatch):
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)
    btc = Engine.objects.create(symbol="BTCUSDT")
    history(btc, OLD, "old")
    with time_machine.travel(NOW, tick=False):
        task_id = async_task("engines_app.jobs.retention.run_retention", task_name="retention")
    assert result(task_id)["errors"] == 1
    assert not EngineError.objects.exists()


def test_bad_days_change_nothing(log_dir):
    btc = Engine.objects.create(symbol="BTCUSDT")
    history(btc, OLD, "old")
    with pytest.raises(ValueError, match="at least 1"):
        run_retention(days=0)
    assert EngineError.objects.count() == 1


def test_a_missing_log_dir_is_not_an_error(log_dir):
    log_dir.rmdir()
    assert run_retention()["log_files"] == 0


def test_pnl_samples_are_kept_a_week_whatever_retention_days_says(log_dir):
    btc = Engine.objects.create(symbol="BTCUSDT")
    for at in (OLD, NEW):
        EnginePnlSample.objects.create(engine=btc, at=at, daily_pnl=1.0, total_pnl=1.0)
    with time_machine.travel(NOW, tick=False):
        assert run_retention(days=30)["pnl_samples"] == 1
    assert list(EnginePnlSample.objects.values_list("at", flat=True)) == [NEW]
