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
from typing import Any

from django.conf import settings

from benchmarks import Row, row
from benchmarks.worker import CRASH_SETTINGS
from engines_app.testing import Installation, environment

WORKER = "benchmarks.worker"
START_TIMEOUT = 120.0


# Start-up -------------------------------------------------------------------------------


def startup(*, engines: int = 1000) -> list[Row]:
    """From ``manage.py runengines`` starting to all N rows saying running, in the DB."""
    return _startup(engines)


def startup_pg(*, engines: int = 1000) -> list[Row]:
    """``startup`` on a fresh PostgreSQL database."""
    with postgres() as url:
        return _startup(engines, url)


def _startup(engines: int, url: str | None = None) -> list[Row]:
    on = " (PostgreSQL)" if url else ""
    with data_dir(engines, url) as path:
        floor = _django_floor(path, url)
        elapsed = _time_to_running(path, engines, url)
    return [
        row(
            f"start-up: {engines} engines running{on}",
            elapsed,
            "s",
            floor,
            "django.setup() in a fresh process",
            "< 5",
        )
    ]


def _django_floor(path: Path, url: str | None = None, repeats: int = 3) -> float:
    """The fastest of a few bare ``django.setup()`` processes: the floor of any start."""
    code = "import django; django.setup()"
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=settings.BASE_DIR,
            env=environment(path, _database(url)),
            check=True,
        )
        times.append(time.perf_counter() - started)
    return min(times)


def _time_to_running(path: Path, engines: int, url: str | None = None) -> float:
    table = _engine_table()
    installation = Installation(path, _database(url))
    started = time.perf_counter()
    process = installation.start("manage.py", "runengines", log_name="runengines")
    try:
        return _poll_running(path, table, engines, process, started, url)
    finally:
        installation.stop(grace=30)


def _poll_running(
    path: Path,
    table: str,
    engines: int,
    process: subprocess.Popen,
    started: float,
    url: str | None = None,
) -> float:
    with _reader(path, url) as db:
        query = f'SELECT COUNT(*) FROM "{table}" WHERE status = ' + ("%s" if url else "?")
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
    return _steady(engines, seconds)


def steady_pg(*, engines: int = 1000, seconds: float = 10.0) -> list[Row]:
    """``steady`` on a fresh PostgreSQL database (write transactions as the runner counts
    them: the server's own count includes everyone's)."""
    with postgres() as url:
        return _steady(engines, seconds, url)


def _steady(engines: int, seconds: float, url: str | None = None) -> list[Row]:
    with data_dir(engines, url) as path:
        bare = _worker(path, "bare", _database(url), engines=engines, seconds=seconds)
        env = CRASH_SETTINGS | _database(url)
        fleet = _worker(path, "steady", env, engines=engines, seconds=seconds)
    n = engines
    rows = [
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
            f"one flush of {n} heartbeats, the runner's own (median; engines in step)",
            fleet["runner_flush_ms"],
            "ms",
            fleet["saves_ms"],
            f"{n} ORM save() calls",
            "< 20",
        ),
        row(
            f"the slowest of those flushes (median engine rows written: "
            f"{fleet['runner_flush_rows']:.0f})",
            fleet["runner_flush_max_ms"],
            "ms",
            fleet["flush_ms"],
            f"{n} beats written on their rows",
            None,
        ),
        row(
            f"one flush that renews {n} leases, the runner's own (median)",
            fleet["runner_renewal_ms"],
            "ms",
            fleet["flush_ms"],
            f"{n} beats written on their rows",
            None,
        ),
        row(
            f"one flush of {n} beats written on their rows, fenced (median; no engine in step)",
            fleet["flush_ms"],
            "ms",
            fleet["saves_ms"],
            f"{n} ORM save() calls",
            None,
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
            "< 50",
        ),
    ]
    if url:  # only SQLite's own count is this runner's alone
        rows = [r for r in rows if "counted by SQLite" not in r["name"]]
        for r in rows:
            r["name"] += " (PostgreSQL)"
    return rows


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
def data_dir(engines: int, url: str | None = None) -> Iterator[Path]:
    """A temp LeviPanel data dir: migrated SQLite file (or the PostgreSQL database at
    ``url``), N engines desired running."""
    with tempfile.TemporaryDirectory(prefix="levipanel-bench-") as name:
        path = Path(name)
        _worker(path, "prepare", _database(url), engines=engines)
        yield path


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL database for one section; ``Skip`` when there is no server."""
    from benchmarks.postgres import database, need, server_url

    server = server_url()
    need(server)
    with database(server) as url:
        yield url


def _database(url: str | None) -> dict[str, str]:
    return {"DATABASE_URL": url} if url else {}


@contextlib.contextmanager
def _reader(path: Path, url: str | None) -> Iterator[Any]:
    """A connection to read the runner's rows with, beside it."""
    if url:
        import psycopg

        with psycopg.connect(url, autocommit=True) as db:
            yield db
        return
    uri = f"file:{path / 'levipanel.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
        yield db


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
