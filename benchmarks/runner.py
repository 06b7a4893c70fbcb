"""The engine core's figures: start-up, steady state of N engines, crash recovery.

Start-up and steady state run in subprocesses on a temp data dir of their own (a migrated
SQLite file with N engines), so the operator's database is never touched and each memory
figure comes from a clean process. Crash recovery needs no database: it drives the runtime
in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

from benchmarks import Row, row
from benchmarks.worker import CRASH_SETTINGS
from engines_app.testing import Installation, environment

WORKER = "benchmarks.worker"
START_TIMEOUT = 120.0


# Start-up -------------------------------------------------------------------------------


def startup(*, engines: int = 1000) -> list[Row]:
    """From ``manage.py runengines`` starting to all N rows saying running, in the DB."""
    with data_dir(engines) as path:
        floor = _django_floor(path)
        elapsed = _time_to_running(path, engines)
    return [
        row(
            f"start-up: {engines} engines running",
            elapsed,
            "s",
            floor,
            "django.setup() in a fresh process",
            "< 5",
        )
    ]


def _django_floor(path: Path, repeats: int = 3) -> float:
    """The fastest of a few bare ``django.setup()`` processes: the floor of any start."""
    code = "import django; django.setup()"
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code], cwd=settings.BASE_DIR, env=environment(path), check=True
        )
        times.append(time.perf_counter() - started)
    return min(times)


def _time_to_running(path: Path, engines: int) -> float:
    table = _engine_table()
    installation = Installation(path)
    started = time.perf_counter()
    process = installation.start("manage.py", "runengines", log_name="runengines")
    try:
        return _poll_running(path, table, engines, process, started)
    finally:
        installation.stop(grace=30)


def _poll_running(
    path: Path, table: str, engines: int, process: subprocess.Popen, started: float
) -> float:
    uri = f"file:{path / 'levipanel.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
        query = f'SELECT COUNT(*) FROM "{table}" WHERE status = ?'
        while True:
            if process.poll() is not None:
                tail = (path / "runengines.log").read_text()[-2000:]
                raise RuntimeError(f"runengines exited with {process.returncode}: {tail}")
            if db.execute(query, ("running",)).fetchone()[0] >= engines:
                return time.perf_counter() - started
            if time.perf_counter() - started > START_TIMEOUT:
                raise RuntimeError(f"{engines} engines not running after {START_TIMEOUT:.0f}s")
            time.sleep(0.01)


def _engine_table() -> str:
    from engines_app.models import Engine

    return Engine._meta.db_table


# Steady state ---------------------------------------------------------------------------


def steady(*, engines: int = 1000, seconds: float = 10.0) -> list[Row]:
    """N engines at their cycle in one runner, beside a bare loop and per-engine saves."""
    with data_dir(engines) as path:
        bare = _worker(path, "bare", engines=engines, seconds=seconds)
        fleet = _worker(path, "steady", CRASH_SETTINGS, engines=engines, seconds=seconds)
    n = engines
    return [
        row(
            f"event-loop lag p99, {n} engines",
            fleet["lag_p99_ms"],
            "ms",
            bare["lag_p99_ms"],
            f"bare asyncio loop, {n} sleeping tasks",
            "< 50",
        ),
        row(
            "RSS per engine",
            fleet["rss_per_engine_kb"],
            "KB",
            bare["rss_per_task_kb"],
            "a bare asyncio task",
            "< 16",
        ),
        row(
            "DB write transactions/s (counted by SQLite)",
            fleet["db_tx_per_s"],
            "tx/s",
            fleet["saves_tx_per_cycle"],
            "one ORM save() per engine per cycle",
            "<= 2",
        ),
        row(
            "DB write transactions/s (runner's counter)",
            fleet["runner_tx_per_s"],
            "tx/s",
            fleet["saves_tx_per_cycle"],
            "one ORM save() per engine per cycle",
            "<= 2",
        ),
        row(
            f"one flush of {n} heartbeats, fenced (median)",
            fleet["flush_ms"],
            "ms",
            fleet["saves_ms"],
            f"{n} ORM save() calls",
            "< 20",
        ),
        row(
            f"one flush of {n} heartbeats, every row's PnL changed (median)",
            fleet["flush_changed_ms"],
            "ms",
            fleet["saves_ms"],
            f"{n} ORM save() calls",
            None,
        ),
        row(
            f"reconcile poll of {n} control rows (median)",
            fleet["poll_ms"],
            "ms",
            fleet["raw_poll_ms"],
            "raw SELECT of the same columns",
            None,
        ),
        row(
            f"reconcile poll when nothing changed, {n} engines (median)",
            fleet["quiet_poll_ms"],
            "ms",
            fleet["raw_poll_ms"],
            "raw SELECT of every control row",
            "< 5",
        ),
        row(
            f"crash seen -> in the database p99 ({fleet['db_crash_samples']} crashes)",
            fleet["db_crash_written_p99_ms"],
            "ms",
            fleet["status_write_ms"],
            "one store.write() of a status row",
            "< 100",
        ),
        row(
            "restart due -> running in the database p99",
            fleet["db_restart_running_p99_ms"],
            "ms",
            fleet["status_write_ms"],
            "one store.write() of a status row",
            "< 200",
        ),
        row(
            f"runner CPU, {n} engines",
            fleet["cpu_percent"],
            "% core",
            bare["cpu_percent"],
            f"bare asyncio loop, {n} sleeping tasks",
            None,
        ),
    ]


# Crash recovery -------------------------------------------------------------------------


def crash(*, engines: int = 1000, seconds: float = 10.0) -> list[Row]:
    """Crash engines over and over among N healthy ones; see how fast recovery acts."""
    from benchmarks.crash import measure

    found = asyncio.run(measure(engines=engines, seconds=min(seconds, 3.0)))
    return [
        row(
            f"crash -> detected p99 ({found['samples']} crashes)",
            found["detect_p99_ms"],
            "ms",
            found["callback_p99_ms"],
            "asyncio done-callback of a raising task, same loop",
            "< 100",
        ),
        row(
            "crash -> running again, beyond backoff p99",
            found["restart_p99_ms"],
            "ms",
            found["call_later_p99_ms"],
            "call_later() lateness + a new task's first step",
            "< 200",
        ),
    ]


# Helpers --------------------------------------------------------------------------------


@contextlib.contextmanager
def data_dir(engines: int) -> Iterator[Path]:
    """A temp LeviPanel data dir: migrated SQLite file, N engines desired running."""
    with tempfile.TemporaryDirectory(prefix="levipanel-bench-") as name:
        path = Path(name)
        _worker(path, "prepare", engines=engines)
        yield path


def _worker(path: Path, job: str, env: dict | None = None, **options: object) -> dict:
    """Run one measurement in a fresh process; its last stdout line is JSON."""
    done = subprocess.run(
        [sys.executable, "-m", WORKER, job, json.dumps(options)],
        cwd=settings.BASE_DIR,
        env=environment(path) | (env or {}),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT + 600,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RuntimeError(f"benchmark worker {job!r} failed: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
