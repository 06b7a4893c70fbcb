"""Measurements that need a process of their own, on a temp data dir (see runner.py).

``python -m benchmarks.worker JOB '{"engines": N, ...}'`` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import io
import json
import logging
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from logging.handlers import QueueHandler
from pathlib import Path

import psutil

from benchmarks import percentile
from engines_app.testing import TransactionCounter

LAG_INTERVAL = 0.01
REPEATS = 20


def symbols(n: int) -> list[str]:
    return [f"B{i:05d}USDT" for i in range(n)]


def prepare(*, engines: int) -> dict:
    """Migrate the temp database and create N engines, desired running."""
    from django.core.management import call_command
    from django.db import connection

    from engines_app.models import Engine

    call_command("migrate", verbosity=0, interactive=False)
    Engine.objects.bulk_create([Engine(symbol=symbol) for symbol in symbols(engines)])
    if connection.vendor == "postgresql":  # the statistics autovacuum keeps on a live database
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return {"engines": Engine.objects.count()}


# A bare loop: the floor the runner is compared with ------------------------------------


def bare(*, engines: int, seconds: float) -> dict:
    return asyncio.run(_bare(engines, seconds))


async def _bare(engines: int, seconds: float) -> dict:
    async def sleeper() -> None:
        while True:
            await asyncio.sleep(1)

    rss_before = _rss()
    tasks = [asyncio.create_task(sleeper()) for _ in range(engines)]
    await asyncio.sleep(0.2)  # every task has taken its first step and is asleep
    rss_after = _rss()
    with _cpu() as cpu:
        lags = await lag_probe(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "rss_per_task_kb": (rss_after - rss_before) / engines / 1024,
        "lag_p99_ms": percentile(lags, 99) * 1000,
        "cpu_percent": cpu.percent,
    }


# The runner with N engines -------------------------------------------------------------


def steady(*, engines: int, seconds: float) -> dict:
    from engines_app.models import Engine

    with TransactionCounter() as counter:
        found = asyncio.run(_steady(engines, seconds, counter))
    Engine.objects.filter(symbol__in=CRASHERS).delete()  # the figures below are for N
    return found | _write_costs(counter) | _poll_costs()


async def _steady(engines: int, seconds: float, counter: TransactionCounter) -> dict:
    from engines_app.runner.lifecycle import Runner
    from engines_app.runner.store import db

    await db(_warm_up)()
    rss_before = _rss()
    runner = Runner(out=io.StringIO())
    task = asyncio.create_task(runner.run())
    await _until(lambda: task.done() or runner.manager.summary()["running"] >= engines)
    if task.done():
        task.result()
    writer = runner.writer
    writes = writer.write_transactions
    await _until(lambda: writer.write_transactions >= writes + 2)  # statuses and a flush
    rss_after = _rss()
    # Steady state: start-up's log lines written, and the engines in step with the flushes.
    await _until(lambda: _log_backlog() == 0 and _in_step(writer, engines), timeout=60)
    transactions, writes, started = counter.count, writer.write_transactions, time.perf_counter()
    writer.flush_log.clear()
    with _cpu() as cpu:
        lags = await lag_probe(seconds)
    elapsed = time.perf_counter() - started
    # A short window may hold no flush of each kind: wait for one (a renewal comes every
    # quarter lease).
    await _until(lambda: {renewed for _, renewed, _ in writer.flush_log} == {False, True})
    flushes = list(writer.flush_log)
    db_tx = (counter.count - transactions) / elapsed
    runner_tx = (writer.write_transactions - writes) / elapsed
    recovery = await _crashes_in_database(runner, min(seconds, 3.0))
    runner.request_exit()
    await task
    plain = [seconds * 1000 for seconds, renewed, _ in flushes if not renewed]
    renewals = [seconds * 1000 for seconds, renewed, _ in flushes if renewed]
    return recovery | {
        "runner_flush_ms": statistics.median(plain) if plain else None,
        "runner_flush_max_ms": max(plain, default=None),
        "runner_flush_rows": statistics.median([rows for *_, rows in flushes] or [0]),
        "runner_renewal_ms": statistics.median(renewals) if renewals else None,
        "rss_per_engine_kb": (rss_after - rss_before) / engines / 1024,
        "lag_p99_ms": percentile(lags, 99) * 1000,
        "cpu_percent": cpu.percent,
        "db_tx_per_s": db_tx,
        "runner_tx_per_s": runner_tx,
    }


# Crashes as the database sees them -----------------------------------------------------

CRASHERS = [f"X{i:04d}USDT" for i in range(10)]
# The runner of this process reads these from the environment (see runner.steady).
CRASH_SETTINGS = {
    "LEVIPANEL_BACKOFF_BASE": "0.2",
    "LEVIPANEL_BACKOFF_CAP": "0.2",
    "LEVIPANEL_BACKOFF_JITTER": "0",
    "LEVIPANEL_MAX_RESTARTS_PER_HOUR": "100000",
}


class WriteLog:
    """An ``engines_written`` receiver: when each status and error reached the database."""

    def __init__(self) -> None:
        self.statuses: list[tuple[float, object]] = []
        self.errors: list[tuple[float, object]] = []

    def receive(self, sender: object, statuses=(), errors=(), **kwargs: object) -> None:
        now = time.time()
        self.statuses.extend((now, status) for status in statuses)
        self.errors.extend((now, error) for error in errors if error.crashed)

    def latencies(self, ids: set[int]) -> tuple[list[float], list[float]]:
        """Crash seen -> written; restart due -> running written (runner clock, seconds)."""
        written = [at - error.at.timestamp() for at, error in self.errors if error.engine_id in ids]
        due: dict[int, float] = {}
        running = []
        for at, status in self.statuses:
            if status.id not in ids:
                continue
            if status.status == "backoff" and status.next_retry_at is not None:
                due[status.id] = status.next_retry_at
            elif status.status == "running" and status.id in due:
                running.append(at - due.pop(status.id))
        return written, running


async def _crashes_in_database(runner, seconds: float) -> dict:
    """Add engines that crash on their second cycle, among the N running ones, and time
    their crashes and restarts as they reach the database."""
    from engines_app.runner.store import db
    from engines_app.signals import engines_written

    log = WriteLog()
    engines_written.connect(log.receive)
    try:
        ids = await db(_add_crashers)()
        await _until(lambda: all(runner.manager.status_of(s) is not None for s in CRASHERS))
        await asyncio.sleep(seconds)
    finally:
        engines_written.disconnect(log.receive)
    written, running = log.latencies(set(ids))
    return {
        "db_crash_samples": len(written),
        "db_crash_written_p99_ms": percentile(written, 99) * 1000,
        "db_restart_running_p99_ms": percentile(running, 99) * 1000,
    }


def _log_backlog() -> int:
    """Engine log records queued for the log thread, not written yet."""
    handlers = logging.getLogger("levipanel.engine").handlers
    return sum(h.queue.qsize() for h in handlers if isinstance(h, QueueHandler))


def _in_step(writer, engines: int) -> bool:
    """The last heartbeat flush wrote the rows of a tenth of the engines at most."""
    return bool(writer.flush_log) and writer.flush_log[-1][2] <= engines / 10


def _add_crashers() -> list[int]:
    from engines_app.models import Engine

    crashers = [
        Engine(symbol=symbol, cycle_interval=0.5, config={"crash_after_cycles": 1})
        for symbol in CRASHERS
    ]
    return [engine.id for engine in Engine.objects.bulk_create(crashers)]


def _warm_up() -> None:
    """Touch what the runner will touch (connection, pages, imports) before RSS is read."""
    from engines_app.runner import store

    rows = store.control_rows()
    store.load_states(list(rows))
    store.pending_commands(0)
    store.write(statuses=[], errors=[], restarts=[], heartbeats=_heartbeats())


def _heartbeats() -> list:
    from engines_app.models import Engine
    from engines_app.runner import store

    now = time.time()
    return [
        store.HeartbeatRow(pk, now, 0, None, None, 0.0, 0.0, 0)
        for pk in Engine.objects.values_list("id", flat=True)
    ]


def _write_costs(counter: TransactionCounter) -> dict:
    """One heartbeat flush of N rows against one ORM save() per engine."""
    from django.db import connection

    from engines_app.models import Engine
    from engines_app.runner import store

    # As the runner writes them: fenced, renewing the leases of every engine it holds.
    claims = store.claim_engines("bench", limit=Engine.objects.count(), lease=60, exclusive=True)
    fence = store.Fence("bench", {claim.id: claim.epoch for claim in claims}, lease=60)
    changed = _heartbeats()
    beats = [dataclasses.replace(row, changed=False) for row in changed]

    def flush(rows: list) -> Callable[[], object]:
        return lambda: store.write(
            statuses=[], errors=[], restarts=[], heartbeats=rows, fence=fence
        )

    flush_ms, flush_changed_ms = _median(flush(beats)), _median(flush(changed))
    rows = changed
    engines = list(Engine.objects.all())

    def save_each() -> None:
        now = datetime.now(UTC)
        for engine in engines:
            engine.daily_pnl += 1.0
            engine.save(update_fields=["last_heartbeat", "daily_pnl", "updated_at"])
            engine.last_heartbeat = now

    saves = _median(save_each, repeats=3)
    status = store.StatusRow(rows[0].id, "running", "", time.time(), 0, 5, None, 0, None)
    one_status = _median(
        lambda: store.write(statuses=[status], errors=[], restarts=[], heartbeats=[])
    )
    connection.ensure_connection()
    if connection.vendor == "sqlite":
        connection.connection.set_trace_callback(counter)
        before = counter.count
        save_each()  # one cycle's worth, counted the same way as the runner's
        connection.connection.set_trace_callback(None)
    else:  # autocommit: each save() is a transaction of its own
        before, counter.count = 0, len(engines)
    return {
        "flush_ms": flush_ms,
        "flush_changed_ms": flush_changed_ms,
        "saves_ms": saves,
        "saves_tx_per_cycle": counter.count - before,
        "status_write_ms": one_status,
    }


def _poll_costs() -> dict:
    """The runner's poll of every control row, against a raw SELECT of the same columns."""
    from django.db import connection

    from engines_app.models import Engine
    from engines_app.runner import store

    table = connection.ops.quote_name(Engine._meta.db_table)
    sql = f"SELECT id, symbol, desired_state, cycle_interval, config FROM {table}"

    def raw() -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            cursor.fetchall()

    def poll() -> None:  # a poll that reads every control row (a command was given)
        store.pending_commands("bench")
        store.control_rows()

    def quiet() -> None:  # a poll when nothing changed: the newest command, the pending ones
        store.latest_command_id()
        store.pending_commands("bench")

    return {"poll_ms": _median(poll), "quiet_poll_ms": _median(quiet), "raw_poll_ms": _median(raw)}


# Probes ---------------------------------------------------------------------------------


async def lag_probe(seconds: float, interval: float = LAG_INTERVAL) -> list[float]:
    """Oversleep of ``sleep(interval)``, again and again: how late the loop runs callbacks."""
    lags = []
    end = time.perf_counter() + seconds
    while (started := time.perf_counter()) < end:
        await asyncio.sleep(interval)
        lags.append(max(0.0, time.perf_counter() - started - interval))
    return lags


async def _until(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"not reached in {timeout:.0f}s")
        await asyncio.sleep(0.02)


class _cpu:
    """CPU time of this process over a block, as a percentage of one core."""

    def __enter__(self) -> _cpu:
        self.process = psutil.Process()
        self.times, self.started = self.process.cpu_times(), time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        times, wall = self.process.cpu_times(), time.perf_counter() - self.started
        used = (times.user - self.times.user) + (times.system - self.times.system)
        self.percent = 100 * used / wall


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def _median(func: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median wall time of ``func`` in milliseconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        func()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


# One runner of a fleet on PostgreSQL (see fleet.py) -------------------------------------


def hold(*, report: str, go: str) -> dict:
    """Run a ``Runner`` on the database of the environment until SIGTERM, probing its loop's
    lag; on SIGUSR1, and at the end, write what was measured so far to ``report``. Until the
    file ``go`` exists, only announce this runner (its heartbeat row)."""
    return asyncio.run(_hold(Path(report), Path(go)))


async def _hold(report: Path, go: Path) -> dict:
    from engines_app.runner.lifecycle import Runner
    from engines_app.runner.store import db

    runner = Runner(out=sys.stdout)
    while not go.exists():
        await db(_announce)(runner)
        await asyncio.sleep(0.5)
    timeline = Timeline(runner)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, runner.request_exit)
    loop.add_signal_handler(signal.SIGUSR1, timeline.dump, report)
    probe = asyncio.create_task(timeline.probe())
    try:
        await runner.run()
    finally:
        probe.cancel()
        timeline.dump(report)
    return {"runner": runner.identity.name, "writes": runner.writer.write_transactions}


def _announce(runner) -> None:
    """Write the runner's heartbeat row before it claims anything, so that every runner of
    the fleet counts the others live: each claims its share at once."""
    from engines_app.runner import store

    identity = runner.identity
    row = store.RunnerRow(identity.name, time.time(), 0, {}, host=identity.host, pid=identity.pid)
    store.write(statuses=[], errors=[], restarts=[], heartbeats=[], runner=row)


class Timeline:
    """A runner's loop lag and its count of write transactions, each stamped with the wall
    clock, so the parent can cut out the window it measured the database in."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.lags: list[tuple[float, float]] = []
        self.writes: list[tuple[float, int]] = []

    async def probe(self, interval: float = LAG_INTERVAL) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(interval)
            now = time.time()
            self.lags.append((now, max(0.0, time.perf_counter() - started - interval)))
            count = self.runner.writer.write_transactions
            if not self.writes or self.writes[-1][1] != count:
                self.writes.append((now, count))  # to within one probe interval

    def dump(self, path: Path) -> None:
        data = {
            "runner": self.runner.identity.name,
            "at": time.time(),
            "lags": self.lags,
            "writes": self.writes,
        }
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(data))
        partial.replace(path)  # the parent never reads half a file


JOBS = {"prepare": prepare, "bare": bare, "steady": steady, "hold": hold}


def main(argv: list[str]) -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levipanel.settings")
    django.setup()
    job, options = argv[1], json.loads(argv[2])
    print(json.dumps(JOBS[job](**options)), flush=True)


if __name__ == "__main__":
    main(sys.argv)
