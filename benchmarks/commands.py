"""Benchmark: operator command -> engine state changed in the database.

A real ``runengines`` subprocess runs on a temporary SQLite data dir (the embedded
default); this process gives stop and start commands through the services, as the admin
and the API do, and times each call until the engine's new status is in the database.
Baseline, measured in the same run on the same file: the bare round trip of one service
call plus one status read, with no runner.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from engines_app.testing import Installation

NAME = "operator command -> engine state changed"
BASELINE_NAME = "service call + status read, no runner"
TARGET = "< 1000"  # ms, judged on the p95 row
POLL = 0.002  # seconds between status reads while waiting
# A command given right after the runner's last change would always land just after its
# poll and always wait a whole poll interval; operators click at random moments.
MAX_GAP = 0.3


def run(*, engines: int = 20, samples: int = 50) -> list[dict]:
    """Time ``samples`` commands (stop, start, stop …) over ``engines`` engines."""
    with (
        tempfile.TemporaryDirectory(prefix="levipanel-bench-") as tmp,
        Installation(Path(tmp)) as panel,
    ):
        panel.migrate()
        with _database(panel.data_dir / "levipanel.sqlite3"):
            symbols = _add_engines(engines)
            baseline = _bare_round_trips(symbols, samples)
            panel.start("manage.py", "runengines", log_name="runner")
            _wait_all(symbols, "running", timeout=60)
            latencies = _command_latencies(symbols, samples)
            panel.stop(grace=20)  # SIGTERM: the runner writes its final state
    return _rows(latencies, baseline)


@contextmanager
def _database(path: Path) -> Iterator[None]:
    """Point this process's default connection at the benchmark's SQLite file."""
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.db.backends.sqlite3.base import DatabaseWrapper

    options = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    config = connections.configure_settings(
        {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path), "OPTIONS": options}}
    )["default"]
    saved = connections[DEFAULT_DB_ALIAS]
    bench = DatabaseWrapper(config, alias=DEFAULT_DB_ALIAS)
    connections[DEFAULT_DB_ALIAS] = bench
    try:
        yield
    finally:
        bench.close()
        connections[DEFAULT_DB_ALIAS] = saved


def _add_engines(count: int) -> list[str]:
    from engines_app.services.engines import engine_add

    symbols = [f"BENCH{i:04d}" for i in range(count)]
    for symbol in symbols:
        engine_add(symbol=symbol, source="benchmark")
    return symbols


def _status(symbol: str) -> str | None:
    from engines_app.models import Engine

    return Engine.objects.filter(symbol=symbol).values_list("status", flat=True).first()


def _wait_all(symbols: list[str], status: str, timeout: float) -> None:
    from engines_app.models import Engine

    deadline = time.monotonic() + timeout
    while Engine.objects.filter(symbol__in=symbols).exclude(status=status).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"engines not {status} after {timeout}s")
        time.sleep(0.05)


def _steps(symbols: list[str], samples: int) -> Iterator[tuple[Callable, str, str]]:
    from engines_app.services.engines import engine_start, engine_stop

    for i in range(samples):
        symbol = symbols[(i // 2) % len(symbols)]
        yield (engine_stop, symbol, "stopped") if i % 2 == 0 else (engine_start, symbol, "running")
    if samples % 2:  # leave the last engine running, as found
        yield engine_start, symbols[(samples // 2) % len(symbols)], "running"


def _bare_round_trips(symbols: list[str], samples: int) -> list[float]:
    from engines_app.models import EngineCommand

    times = []
    for service, symbol, _ in _steps(symbols, samples):
        began = time.perf_counter()
        service(symbol=symbol, source="benchmark")
        _status(symbol)
        times.append(time.perf_counter() - began)
    # Nothing was carried out: these commands are not for the runner that starts next.
    EngineCommand.objects.filter(acked_at=None).update(
        acked_at=datetime.now(UTC), outcome="done", message="benchmark baseline, no runner"
    )
    return times[:samples]


def _command_latencies(symbols: list[str], samples: int, timeout: float = 30) -> list[float]:
    gaps = random.Random(samples)  # seeded: the same pauses every run
    times = []
    for service, symbol, wanted in _steps(symbols, samples):
        time.sleep(gaps.uniform(0, MAX_GAP))
        began = time.perf_counter()
        service(symbol=symbol, source="benchmark")
        while _status(symbol) != wanted:
            if time.perf_counter() - began > timeout:
                raise RuntimeError(f"{symbol} not {wanted} after {timeout}s")
            time.sleep(POLL)
        times.append(time.perf_counter() - began)
    return times[:samples]


def _percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49] * 1000, "p95": cuts[94] * 1000, "p99": cuts[98] * 1000}


def _rows(latencies: list[float], baseline: list[float]) -> list[dict]:
    measured, bare = _percentiles(latencies), _percentiles(baseline)
    return [
        {
            "name": f"{NAME} {p}",
            "value": round(measured[p], 1),
            "unit": "ms",
            "baseline": round(bare[p], 2),
            "baseline_name": f"{BASELINE_NAME} {p}",
            "target": TARGET if p == "p95" else None,
        }
        for p in ("p50", "p95", "p99")
    ]


if __name__ == "__main__":
    import django

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levipanel.settings")
    django.setup()
    for row in run():
        target = f"; target p95 {row['target']} ms" if row["target"] else ""
        print(
            f"{row['name']}: {row['value']} {row['unit']} "
            f"(baseline {row['baseline']} {row['unit']}: {row['baseline_name']}{target})"
        )
