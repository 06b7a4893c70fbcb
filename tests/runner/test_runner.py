"""The runner against a real SQLite file: the bridge between the runtime and the ORM."""

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async

from engines_app.models import Engine, EngineCommand, EngineError, EngineRestart
from engines_app.runner import store
from engines_app.runner.lifecycle import Runner
from engines_app.services import engines as services
from engines_app.testing import TransactionCounter
from tests.helpers import (
    ShiftedClock,
    close_db_thread_connection,
    db,
    eventually,
    fast_settings,
    running,
)

pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def engine(symbol):
    return Engine.objects.get(symbol=symbol)


@sync_to_async
def status_of(symbol):
    return Engine.objects.filter(symbol=symbol).values_list("status", flat=True).first()


def make_runner(tmp_path, **overrides) -> Runner:
    return Runner(settings=fast_settings(tmp_path / "logs", **overrides))


async def test_fresh_database_runs_the_configured_symbols(tmp_path):
    async with running(make_runner(tmp_path)):
        await eventually(lambda: db(lambda: Engine.objects.filter(status="running").count() == 3))
        rows = await db(lambda: list(Engine.objects.values_list("symbol", "desired_state")))
        assert sorted(rows) == [(s, "running") for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
        first = await eventually(lambda: _heartbeat("BTCUSDT"))

        async def newer_heartbeat() -> bool:
            return await _heartbeat("BTCUSDT") > first

        await eventually(newer_heartbeat, timeout=2)  # heartbeats are flushed
    statuses = await db(lambda: set(Engine.objects.values_list("status", flat=True)))
    desired = await db(lambda: set(Engine.objects.values_list("desired_state", flat=True)))
    assert statuses == {"stopped"}
    assert desired == {"running"}  # a shutdown is not an operator's stop


async def test_symbols_subset_runs_only_those(tmp_path):
    await db(Engine.objects.bulk_create, [Engine(symbol="BTCUSDT"), Engine(symbol="ETHUSDT")])
    runner = Runner(symbols=["ETHUSDT", "XRPUSDT"], settings=fast_settings(tmp_path / "logs"))
    async with running(runner):
        await eventually(lambda: db(lambda: Engine.objects.filter(status="running").count() == 2))
        assert await status_of("BTCUSDT") == "stopped"
        assert await status_of("XRPUSDT") == "running"


async def test_desired_state_changed_in_the_database_is_applied(tmp_path):
    # Written straight to the rows, with no command (the services record one): the runner
    # sees such a change in the fleet's summary, checked every FULL_READ, and reads the rows.
    async with running(make_runner(tmp_path)) as runner:
        await eventually(lambda: _is("ETHUSDT", "running"))
        await db(lambda: Engine.objects.filter(symbol="ETHUSDT").update(desired_state="stopped"))
        await eventually(lambda: _is("ETHUSDT", "stopped"), timeout=3)
        await db(lambda: Engine.objects.filter(symbol="ETHUSDT").update(desired_state="running"))
        await eventually(lambda: _is("ETHUSDT", "running"), timeout=3)
        await db(Engine.objects.create, symbol="XRPUSDT")
        await eventually(lambda: _is("XRPUSDT", "running"), timeout=3)
        await db(lambda: Engine.objects.filter(symbol="XRPUSDT").delete())
        await eventually(lambda: runner.manager.status_of("XRPUSDT") is None, timeout=3)


async def test_a_quiet_poll_reads_no_control_rows_until_a_command_is_given(tmp_path, monkeypatch):
    reads = []
    real_rows = store.control_rows

    def control_rows(*args, **kwargs):
        reads.append(time.monotonic())
        return real_rows(*args, **kwargs)

    monkeypatch.setattr(store, "control_rows", control_rows)
    async with running(make_runner(tmp_path)) as runner:
        await eventually(lambda: _is("ETHUSDT", "running"))
        # The first flush says running (the engines took their first step before it): the
        # first poll's full read may come after it. Count from the poll after that one.
        first = runner.reconciler.polls
        await eventually(lambda: runner.reconciler.polls > first)
        polls, before = runner.reconciler.polls, len(reads)
        await eventually(lambda: runner.reconciler.polls >= polls + 20)  # 20 polls, 0.05 s apart
        # The fleet's summary (checked every 0.5 s) stood still: no full read but the first
        # summary's own.
        assert len(reads) - before <= 1
        await db(services.engine_stop, symbol="ETHUSDT")
        await eventually(lambda: _is("ETHUSDT", "stopped"), timeout=1)  # a command: at once


async def _is(symbol, status):
    return await status_of(symbol) == status


async def _heartbeat(symbol):
    return await db(lambda: Engine.objects.with_heartbeat().get(symbol=symbol).heartbeat)


async def test_crash_is_written_and_restarted_after_backoff(tmp_path):
    await db(Engine.objects.create, symbol="BTCUSDT", config={"crash_after_cycles": 2})
    async with running(make_runner(tmp_path, backoff_base=0.3)):
        await eventually(lambda: _is("BTCUSDT", "backoff"), timeout=2)
        row = await engine("BTCUSDT")
        assert row.restart_attempt == 1 and row.restart_budget_left == 4
        assert row.next_retry_at is not None
        assert "InjectedCrash" in row.status_reason and row.error_count == 1
        restart = await db(EngineRestart.objects.get)
        assert restart.attempt == 1 and restart.backoff_seconds == pytest.approx(0.3)
        error = await db(EngineError.objects.get)
        assert error.type == "InjectedCrash" and error.crashed and "Traceback" in error.traceback
        await eventually(lambda: _is("BTCUSDT", "running"), timeout=2)


async def test_restart_limit_survives_a_runner_restart(tmp_path):
    await db(Engine.objects.create, symbol="BTCUSDT", config={"crash_after_cycles": 1})
    settings = dict(backoff_base=0.02, backoff_cap=0.02)
    async with running(make_runner(tmp_path, **settings)):
        await eventually(lambda: db(lambda: EngineRestart.objects.count() >= 3), timeout=3)
    before = await db(EngineRestart.objects.count)
    assert 3 <= before < 5
    # A new runner, a new manager: the hourly budget is read back from the database.
    async with running(make_runner(tmp_path, **settings)):
        await eventually(lambda: _is("BTCUSDT", "failed"), timeout=3)
    assert await db(EngineRestart.objects.count) == 5
    row = await engine("BTCUSDT")
    assert "restart limit reached" in row.status_reason
    # Failed stays failed across runner restarts until an operator acts.
    async with running(make_runner(tmp_path, **settings)) as runner:
        polls = runner.reconciler.polls
        await eventually(lambda: runner.reconciler.polls >= polls + 3)  # it looked, 3 times
        assert not runner.manager.is_alive("BTCUSDT")
        assert await status_of("BTCUSDT") == "failed"
        await db(services.engine_restart, symbol="BTCUSDT")
        await eventually(lambda: db(lambda: EngineRestart.objects.count() > 5), timeout=3)


async def test_fatal_config_fails_at_once(tmp_path):
    await db(Engine.objects.create, symbol="BTCUSDT", config={"cycle_every": 3})
    await db(Engine.objects.create, symbol="ETHUSDT", config={"fatal_after_cycles": 1})
    async with running(make_runner(tmp_path)):
        await eventually(lambda: _is("BTCUSDT", "failed"), timeout=2)
        await eventually(lambda: _is("ETHUSDT", "failed"), timeout=2)
        assert "unknown engine option(s): cycle_every" in (await engine("BTCUSDT")).status_reason
    assert await db(EngineRestart.objects.count) == 0
    errors = await db(lambda: list(EngineError.objects.values_list("fatal", flat=True)))
    assert errors and all(errors)


async def test_hung_engine_is_detected_and_restarted(tmp_path):
    await db(Engine.objects.create, symbol="BTCUSDT", config={"hang_after_cycles": 2})
    async with running(make_runner(tmp_path, heartbeat_timeout=0.3)):
        hang = EngineError.objects.filter(type="HeartbeatTimeout")
        await eventually(lambda: db(hang.exists), timeout=3)
        await eventually(lambda: db(lambda: EngineRestart.objects.exists()), timeout=1)
        await eventually(lambda: _is("BTCUSDT", "running"), timeout=2)


async def test_config_change_restarts_just_that_engine(tmp_path):
    async with running(make_runner(tmp_path)) as runner:
        await eventually(lambda: db(lambda: Engine.objects.filter(status="running").count() == 3))
        manager = runner.manager
        btc, eth = manager.engine_of("BTCUSDT"), manager.engine_of("ETHUSDT")
        command = await db(services.engine_configure, symbol="BTCUSDT", cycle_interval=0.02)
        await eventually(lambda: manager.engine_of("BTCUSDT") is not btc, timeout=1)
        assert manager.engine_of("BTCUSDT").config.cycle_interval == 0.02
        assert manager.engine_of("ETHUSDT") is eth
        await eventually(lambda: db(lambda: _acked(command.pk)), timeout=1)
        assert await db(lambda: EngineCommand.objects.get(pk=command.pk).message) == "configured"


def _acked(pk: int) -> bool:
    return EngineCommand.objects.filter(pk=pk).exclude(acked_at=None).exists()


async def test_commands_are_carried_out_in_order_and_acknowledged(tmp_path):
    async with running(make_runner(tmp_path)):
        await eventually(lambda: db(lambda: Engine.objects.filter(status="running").count() == 3))
        await db(services.engine_stop, symbol="SOLUSDT", source="test")
        await db(services.engine_restart, symbol="BTCUSDT", source="test")
        unacked = EngineCommand.objects.filter(acked_at=None)
        await eventually(lambda: db(lambda: not unacked.exists()))
        commands = await db(
            lambda: list(
                EngineCommand.objects.order_by("id").values_list("action", "outcome", "message")
            )
        )
        assert commands == [("stop", "done", "stopped"), ("restart", "done", "restarted")]
        await eventually(lambda: _is("SOLUSDT", "stopped"))


async def test_write_transactions_are_batched_not_per_engine(tmp_path):
    symbols = [f"T{i:03d}USDT" for i in range(200)]
    await db(Engine.objects.bulk_create, [Engine(symbol=s) for s in symbols])
    await close_db_thread_connection()
    with TransactionCounter() as counter:
        async with running(make_runner(tmp_path, cycle_interval=0.05, flush_interval=0.2)):
            up = Engine.objects.filter(status="running")
            await eventually(lambda: db(lambda: up.count() == 200))
            start = counter.count
            # A window of real time, not a wait for a condition: the figure is transactions
            # per second. 20 cycles of 200 engines = 4,000 engine-cycles.
            await asyncio.sleep(1.0)
            steady = counter.count - start
    # One transaction per flush interval (5 in a second), not one per engine per cycle.
    assert 3 <= steady <= 7, steady
    heartbeats = await db(lambda: Engine.objects.filter(last_heartbeat=None).count())
    assert heartbeats == 0


async def test_database_outage_is_survived(tmp_path, monkeypatch):
    from django.db import OperationalError

    from engines_app.runner import store

    async with running(make_runner(tmp_path)) as runner:
        await eventually(lambda: _is("BTCUSDT", "running"))
        real_write = store.write
        calls = {"n": 0}

        def broken(**kwargs):
            calls["n"] += 1
            raise OperationalError("database is gone")

        monkeypatch.setattr(store, "write", broken)
        await db(lambda: None)
        await eventually(lambda: calls["n"] >= 1, timeout=2)
        await db(lambda: Engine.objects.filter(symbol="ETHUSDT").update(desired_state="stopped"))
        await eventually(lambda: calls["n"] >= 2, timeout=5)  # a retry failed too
        assert runner.manager.is_alive("BTCUSDT")  # engines keep running
        monkeypatch.setattr(store, "write", real_write)
        await eventually(lambda: _is("ETHUSDT", "stopped"), timeout=5)  # the queued change lands


async def test_jsonl_log_lines_carry_the_fields(tmp_path):
    async with running(make_runner(tmp_path)):
        await eventually(lambda: _is("BTCUSDT", "running"))
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert any(name.startswith("engine-BTCUSDT-") and name.endswith(".jsonl") for name in files)
    path = next((tmp_path / "logs").glob("engine-BTCUSDT-*.jsonl"))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert {"ts", "level", "symbol", "msg"} <= set(lines[0])
    assert lines[0]["symbol"] == "BTCUSDT"
    assert lines[0]["msg"] == "Starting engine for BTCUSDT"
    assert any("stopped" in line["msg"] for line in lines)


async def test_attempt_and_budget_follow_the_sliding_hour_while_running(tmp_path):
    btc = await db(Engine.objects.create, symbol="BTCUSDT")
    then = datetime.now(UTC) - timedelta(seconds=3570)  # inside the hour, for 30 s more
    await db(
        EngineRestart.objects.bulk_create,
        [
            EngineRestart(engine=btc, at=then, reason="x", attempt=n, backoff_seconds=60)
            for n in (1, 2)
        ],
    )
    clock = ShiftedClock()
    runner = Runner(settings=fast_settings(tmp_path / "logs"), clock=clock)

    async def recovery_view():
        row = await engine("BTCUSDT")
        return row.restart_attempt, row.restart_budget_left

    async with running(runner):
        await eventually(lambda: _is("BTCUSDT", "running"))
        assert await eventually(lambda: _equals(recovery_view, (2, 3)))  # read back from the rows
        clock.offset = 700.0  # both restarts leave the hour; a stable run forgives the streak
        assert await eventually(lambda: _equals(recovery_view, (0, 5)), timeout=3)


async def _equals(read, expected):
    return await read() == expected


@pytest.mark.parametrize("by", ["settings", "--symbols"])
async def test_a_symbol_listed_twice_is_one_engine(tmp_path, by):
    twice = ["ETHUSDT", "BTCUSDT", "ETHUSDT"]
    if by == "settings":
        runner = Runner(settings=fast_settings(tmp_path, symbols=twice))
    else:
        runner = Runner(symbols=twice, settings=fast_settings(tmp_path))
    async with running(runner):
        await eventually(lambda: _all_running(2))
    assert [symbol for symbol, _ in await _engine_rows()] == ["BTCUSDT", "ETHUSDT"]


@sync_to_async
def _engine_rows():
    return sorted(Engine.objects.values_list("symbol", "status"))


async def _all_running(n):
    rows = await _engine_rows()
    return len(rows) == n and {status for _, status in rows} == {"running"}


async def test_writes_resume_as_soon_as_the_database_answers_again(tmp_path, monkeypatch):
    from django.db import OperationalError

    async with running(make_runner(tmp_path)) as runner:
        await eventually(lambda: _is("BTCUSDT", "running"))
        real_write, real_pending = store.write, store.pending_commands
        written: list[float] = []

        def write(**kwargs):
            done = real_write(**kwargs)
            written.append(time.monotonic())
            return done

        def down(*args, **kwargs):
            raise OperationalError("database is gone")

        monkeypatch.setattr(store, "write", down)
        monkeypatch.setattr(store, "pending_commands", down)
        # Polls and writes fail for 2 s: the backoff grows with every failed poll.
        outage_end = time.monotonic() + 2.0
        await eventually(lambda: time.monotonic() > outage_end, timeout=5)
        monkeypatch.setattr(store, "pending_commands", real_pending)
        monkeypatch.setattr(store, "write", write)
        back = time.monotonic()
        await eventually(lambda: written, timeout=5)
        # The first poll that goes through lifts the backoff: the leases are renewed now,
        # not seconds later (which, with a longer outage, would fence the runner).
        assert written[0] - back < 1.0
        assert runner.manager.is_alive("BTCUSDT")


async def test_no_cycles_are_collected_while_the_fleet_starts_then_its_engines_are_frozen(
    tmp_path, monkeypatch
):
    import gc

    gc.unfreeze()
    collecting: list[bool] = []
    real_claim = store.claim_engines

    def claim(runner, **options):
        collecting.append(gc.isenabled())
        return real_claim(runner, **options)

    monkeypatch.setattr(store, "claim_engines", claim)
    runner = make_runner(tmp_path)
    async with running(runner):
        await eventually(lambda: _is("BTCUSDT", "running"))
        await eventually(lambda: gc.get_freeze_count() > 0)
        assert gc.isenabled()  # on again once the engines took their first steps
    assert collecting and not any(collecting)  # off while claiming and starting
    assert gc.isenabled()
    gc.unfreeze()


async def test_an_engine_that_never_starts_does_not_keep_the_collector_off(tmp_path, monkeypatch):
    import gc

    from engines_app.runner import reconciler

    monkeypatch.setattr(reconciler, "SETTLE_WAIT", 1.5)
    runner = make_runner(tmp_path)
    summary = runner.manager.summary
    monkeypatch.setattr(runner.manager, "summary", lambda: summary() | {"starting": 1})
    async with running(runner):
        polls = runner.reconciler.polls
        await eventually(lambda: runner.reconciler.polls >= polls + 2)
        assert not gc.isenabled()  # an engine still starting: off, for now
        await eventually(gc.isenabled, timeout=5)  # the wait ran out
    gc.unfreeze()
