"""Commands end to end: given through the services (as the admin and the API give them),
carried out by a real ``runengines`` subprocess on this test's SQLite file."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client

from engines_app.models import Engine, EngineCommand, EngineRestart
from engines_app.services.engines import (
    engine_add,
    engine_remove,
    engine_restart,
    engine_start,
    engine_stop,
)
from engines_app.testing import Installation
from tests.helpers import eventually_sync

READY = "LeviPanel engine runner ready"


class Runner:
    """``manage.py runengines`` against the test database, as a user would start it."""

    def __init__(self, tmp_path) -> None:
        data_dir = tmp_path / "data"
        data_dir.mkdir(exist_ok=True)
        database = connection.settings_dict["NAME"]
        self.project = Installation(
            data_dir,
            extra_env={
                "DATABASE_URL": f"sqlite:///{database}",
                "LEVIPANEL_CYCLE_INTERVAL": "0.05",
                "LEVIPANEL_FLUSH_INTERVAL": "0.2",
            },
        )
        self.runs = 0
        self.process = None

    def start(self) -> None:
        self.runs += 1
        name = f"runner-{self.runs}"
        self.process = self.project.start("manage.py", "runengines", log_name=name)
        eventually_sync(
            lambda: READY in self.log(), timeout=20, message=f"runner not ready:\n{self.log()}"
        )

    def log(self) -> str:
        return self.process.log_path.read_text() if self.process else ""

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(15) == 0, self.log()


@pytest.fixture
def runner(transactional_db, tmp_path):
    runner = Runner(tmp_path)
    yield runner
    runner.project.stop()  # before the test database is flushed


def statuses() -> dict[str, str]:
    return dict(Engine.objects.values_list("symbol", "status"))


def wait_statuses(expected: dict[str, str], timeout: float = 10) -> None:
    eventually_sync(
        lambda: statuses() == expected,
        timeout=timeout,
        message=f"wanted {expected}, have {statuses()}",
    )


def all_acked() -> bool:
    return not EngineCommand.objects.filter(acked_at=None).exists()


def engine_starts(runner: Runner, symbol: str) -> int:
    """How often the engine's own log says it started."""
    logs = runner.project.data_dir / "logs"
    return sum(
        path.read_text().count(f"Starting engine for {symbol}")
        for path in logs.glob(f"engine-{symbol}-*.jsonl")
    )


def test_commands_given_while_no_runner_runs_are_applied_in_order_once(runner):
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        engine_add(symbol=symbol)
    engine_stop(symbol="BTCUSDT", source="api")
    engine_start(symbol="BTCUSDT", source="api")  # the later command wins
    engine_stop(symbol="ETHUSDT", source="admin")
    engine_restart(symbol="SOLUSDT", source="admin")
    engine_stop(symbol="SOLUSDT", source="admin")
    engine_add(symbol="ADAUSDT", desired_state="stopped")
    engine_start(symbol="ADAUSDT")
    engine_restart(symbol="ADAUSDT")  # the runner's first start of it is that restart
    engine_add(symbol="XRPUSDT")
    engine_remove(symbol="XRPUSDT")
    given = list(EngineCommand.objects.order_by("id").values_list("id", "action", "symbol"))
    assert len(given) == 13 and not EngineCommand.objects.exclude(acked_at=None).exists()

    runner.start()
    eventually_sync(all_acked, message="not every command was acknowledged")
    final = {"BTCUSDT": "running", "ETHUSDT": "stopped", "SOLUSDT": "stopped", "ADAUSDT": "running"}
    wait_statuses(final)
    # The runner reports each command as it carries it out: all of them, in order.
    done = [
        line.split(":")[0].split()[1:]
        for line in runner.log().splitlines()
        if line.startswith("Command ")
    ]
    assert done == [[str(pk), action, symbol] for pk, action, symbol in given]
    outcomes = list(EngineCommand.objects.order_by("id").values_list("outcome", "message"))
    assert outcomes == [
        ("done", "running"),  # add BTCUSDT: started with the runner
        ("done", "superseded: a later command wants it stopped"),  # add ETHUSDT
        ("done", "superseded: a later command wants it stopped"),  # add SOLUSDT
        ("done", "superseded: a later command wants it running"),  # stop BTCUSDT
        ("done", "running"),  # start BTCUSDT
        ("done", "stopped"),  # stop ETHUSDT
        ("done", "superseded: a later command wants it stopped"),  # restart SOLUSDT
        ("done", "stopped"),  # stop SOLUSDT
        ("done", "running"),  # add ADAUSDT
        ("done", "running"),  # start ADAUSDT
        ("done", "restarted: started after the command was given"),  # restart ADAUSDT
        ("done", "engine no longer exists"),  # add XRPUSDT
        ("done", "removed"),  # remove XRPUSDT
    ]
    # Overtaken commands make no engine flap: each wanted one started exactly once.
    starts = {symbol: engine_starts(runner, symbol) for symbol in ("BTCUSDT", "SOLUSDT", "ADAUSDT")}
    assert starts == {"BTCUSDT": 1, "SOLUSDT": 0, "ADAUSDT": 1}
    acked = list(EngineCommand.objects.order_by("id").values_list("id", "acked_at"))
    runner.stop()

    # A second runner finds nothing left to do: no command is applied twice.
    runner.start()
    wait_statuses(final)
    assert "Command " not in runner.log()
    assert list(EngineCommand.objects.order_by("id").values_list("id", "acked_at")) == acked
    runner.stop()


def test_commands_given_while_the_runner_runs_change_the_engine(runner):
    # The latency target (p95 < 1 s) is measured by benchmarks/commands.py,
    # not asserted here: a loaded test machine must not make this test flaky.
    engine_add(symbol="BTCUSDT")
    runner.start()
    wait_statuses({"BTCUSDT": "running"})
    for service, wanted in [(engine_stop, "stopped"), (engine_start, "running")] * 3:
        command = service(symbol="BTCUSDT", source="api")
        wait_statuses({"BTCUSDT": wanted}, timeout=5)
        eventually_sync(lambda c=command: EngineCommand.objects.get(pk=c.pk).acked_at, timeout=5)
    assert engine_starts(runner, "BTCUSDT") == 4
    engine_stop(symbol="BTCUSDT")
    wait_statuses({"BTCUSDT": "stopped"})
    command = engine_restart(symbol="BTCUSDT")  # a stopped engine: one start, not two
    eventually_sync(lambda: EngineCommand.objects.get(pk=command.pk).acked_at, timeout=5)
    wait_statuses({"BTCUSDT": "running"})
    command.refresh_from_db()
    assert command.message == "restarted: started after the command was given"
    assert engine_starts(runner, "BTCUSDT") == 5
    command = engine_restart(symbol="BTCUSDT")  # a running engine: stopped, started again
    eventually_sync(lambda: EngineCommand.objects.get(pk=command.pk).acked_at, timeout=5)
    command.refresh_from_db()
    assert command.message == "restarted"
    eventually_sync(lambda: engine_starts(runner, "BTCUSDT") == 6, timeout=5)


def test_restarting_a_failed_engine_clears_its_failure_budget(runner):
    engine_add(symbol="BTCUSDT")
    now = datetime.now(UTC)
    btc = Engine.objects.get()
    for attempt in range(1, 6):  # the budget of 5 restarts an hour is used up
        at = now - timedelta(minutes=attempt)
        EngineRestart.objects.create(
            engine=btc, at=at, reason="crash", attempt=attempt, backoff_seconds=60
        )
    Engine.objects.filter(pk=btc.pk).update(status="failed", restart_budget_left=0)
    EngineCommand.objects.update(acked_at=now, outcome="done")  # the add ran long ago
    runner.start()
    assert "Engine BTCUSDT is failed" in runner.log()
    assert statuses() == {"BTCUSDT": "failed"}
    engine_restart(symbol="BTCUSDT", source="api")
    wait_statuses({"BTCUSDT": "running"})
    eventually_sync(lambda: Engine.objects.get().restart_budget_left == 5, timeout=5)


def test_a_config_edit_in_the_admin_restarts_just_that_engine(runner, django_user_model):
    engine_add(symbol="BTCUSDT")
    engine_add(symbol="ETHUSDT")
    runner.start()
    wait_statuses({"BTCUSDT": "running", "ETHUSDT": "running"})
    before = dict(Engine.objects.values_list("symbol", "started_at"))
    operator = django_user_model.objects.create_user("operator", is_staff=True)
    operator.user_permissions.add(*Permission.objects.filter(codename__endswith="engine"))
    client = Client()
    client.force_login(operator)
    btc = Engine.objects.get(symbol="BTCUSDT")
    response = client.post(
        f"/admin/engines_app/engine/{btc.pk}/change/",
        {"desired_state": "running", "cycle_interval": "0.02", "config": '{"seed": 5}'},
    )
    assert response.status_code == 302
    changed = "Engine BTCUSDT config changed: restarting it"
    eventually_sync(lambda: changed in runner.log(), timeout=5)

    def restarted() -> bool:
        started = Engine.objects.get(symbol="BTCUSDT").started_at  # None while it restarts
        return started is not None and started > before["BTCUSDT"]

    eventually_sync(restarted, timeout=5, message="BTCUSDT was not restarted")
    wait_statuses({"BTCUSDT": "running", "ETHUSDT": "running"})
    assert Engine.objects.get(symbol="ETHUSDT").started_at == before["ETHUSDT"]
    assert "ETHUSDT config changed" not in runner.log()
    runner.stop()


def test_the_benchmark_reports_latency_beside_its_baseline(django_db_blocker):
    from benchmarks import commands, judge

    with django_db_blocker.unblock():
        rows = commands.run(engines=2, samples=6)
    assert [row["name"] for row in rows] == [f"{commands.NAME} {p}" for p in ("p50", "p95", "p99")]
    assert [judge(row)["result"] for row in rows] == [None, "PASS", None]  # p95 < 1 s judged
    for row in rows:
        assert row["unit"] == "ms"
        assert row["value"] > row["baseline"] > 0  # the runner's work costs more than a write
        assert row["baseline_name"].startswith("service call + status read")
