"""A soak: N trading engines in one runner for many minutes, some crashing, a few hanging.

The runner runs in a worker process of its own (``python -m benchmarks.soak runner``) on a
temp data dir (the embedded SQLite file), beside an operator process that restarts a random
healthy engine every few seconds through the services, as the admin or the API would: two
writers on one SQLite file. The worker samples its own RSS every few seconds and its loop
lag all the time (the probe of ``benchmarks.worker``), counts every crash written and every
crashed engine written ``running`` again, and every database error and log record that says
"database is locked". At the end it stops the runner (its final flush) and checks the ledger
read back from the file: each engine's ``trade_count`` equals its Trade rows, ``seq`` runs
1..n and the position is the net of the fills; a broken engine counts as a lost write.

Memory is judged after a warm-up (the first fifth of the run, at most 5 minutes): the slope
of a least-squares line through the RSS samples, in KB/min, beside its noise band (two
standard errors of that slope): flat is a slope inside it.

With ``--tracemalloc N`` the runner also traces its Python allocations (N frames each): it
samples the traced total beside each RSS sample, snapshots at the end of the warm-up and at
the end, and prints the allocation sites that grew most in between (``TOP_SITES``). RSS that
grows while the traced total stays flat is the allocator (fragmentation, arenas not given
back), not a Python structure growing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import psutil

from benchmarks import Row, percentile, row
from benchmarks.worker import lag_probe

RSS_EVERY = 5.0  # seconds between RSS samples
OPERATOR_EVERY = 3.0  # seconds between operator restarts
CRASH_SHARE = 0.05  # of the engines, crashing now and then
CRASH_PROBABILITY = 0.003  # per cycle: one crash every ~5.5 minutes per crashing engine
HANGERS = 5
HANG_AFTER = 20  # cycles
SETTINGS = {
    # Crashes and hangs recover within seconds, and never exhaust a restart budget: the
    # soak is about what recovery leaves behind, again and again.
    "LEVIPANEL_BACKOFF_BASE": "1",
    "LEVIPANEL_BACKOFF_CAP": "4",
    "LEVIPANEL_MAX_RESTARTS_PER_HOUR": "100000",
    "LEVIPANEL_HEALTH_CHECK_INTERVAL": "2",
    "LEVIPANEL_HEARTBEAT_TIMEOUT": "10",
}
LOCKED = "database is locked"
TOP_SITES = 15


def run(*, engines: int = 1000, minutes: float = 30.0, tracemalloc: int = 0) -> list[Row]:
    """Soak N engines for ``minutes`` and report memory, loop lag, recovery and writes;
    with ``tracemalloc`` (frames a site), also the traced memory and its growing sites."""
    from engines_app.testing import Installation

    with tempfile.TemporaryDirectory(prefix="levipanel-soak-") as name:
        path = Path(name)
        report = path / "soak.json"
        with Installation(path, SETTINGS) as installation:
            installation.migrate()
            setup = _child(installation, "prepare", str(engines))
            if setup.wait(120) != 0:
                raise RuntimeError(f"soak prepare failed: {setup.log_path.read_text()[-2000:]}")
            started = time.perf_counter()
            runner = _child(
                installation, "runner", str(minutes * 60), str(report), str(tracemalloc)
            )
            installation.wait_for_line(runner, "soak: running", timeout=300)
            operator = _child(installation, "operator", str(path / "stop"))
            runner.wait(minutes * 60 + 600)
            (path / "stop").touch()
            operator.wait(60)
            if runner.returncode != 0 or not report.exists():
                tail = runner.log_path.read_text()[-2000:]
                raise RuntimeError(f"soak runner exited with {runner.returncode}: {tail}")
            found = json.loads(report.read_text())
            found["operator_locked"] = _count_locked(operator.log_path)
            found["operator_restarts"] = _last_count(operator.log_path)
            found["wall_minutes"] = (time.perf_counter() - started) / 60
    marks = ", ".join(f"{mb:.1f} MB at minute {at:g}" for at, mb in found["rss_marks"])
    print(f"soak: RSS {marks}", file=sys.stderr, flush=True)
    if found.get("growing_sites"):
        print(growing_report(found), file=sys.stderr, flush=True)
    return rows(found, engines=engines)


def _child(installation, job: str, *args: str):
    return installation.start("-m", "benchmarks.soak", job, *args, log_name=f"soak-{job}")


def rows(found: dict, *, engines: int) -> list[Row]:
    """The soak's figures, each beside its baseline."""
    slope, noise = found["rss_slope_kb_per_min"], found["rss_noise_kb_per_min"]
    per_minute = found["lag_p99_per_minute_ms"]
    minutes = len(per_minute)
    locked = found["locked"] + found["operator_locked"]
    out = [
        row(
            f"RSS slope after warm-up ({found['rss_samples']} samples, "
            f"RSS {found['rss_end_mb']:.0f} MB at the end)",
            slope,
            "KB/min",
            noise,
            "noise band: 2 standard errors of the slope",
            None,
        ),
        row(
            f"loop lag p99, worst minute of {minutes}",
            max(per_minute, default=math.nan),
            "ms",
            statistics.median(per_minute) if per_minute else math.nan,
            "median minute's p99",
            "< 50",
        ),
        row(
            f"crashes recovered ({found['crashes']} crashes and hangs seen)",
            found["recovered"],
            "engines",
            found["crashes"],
            "crashes and hangs written",
            None,
        ),
        row(
            f'"{LOCKED}" errors (runner and operator, {found["operator_restarts"]} '
            "operator restarts)",
            locked,
            "errors",
            found["write_transactions"],
            "runner write transactions",
            "<= 0",
        ),
        row(
            f"lost writes ({found['trades']} fills stored)",
            found["lost_writes"],
            "engines",
            engines,
            "engines checked",
            "<= 0",
        ),
    ]
    if "traced_slope_kb_per_min" in found:
        out.append(
            row(
                "traced Python memory slope after warm-up (tracemalloc, "
                f"{found['traced_end_mb']:.0f} MB traced at the end)",
                found["traced_slope_kb_per_min"],
                "KB/min",
                slope,
                "RSS slope of the same run",
                None,
            )
        )
    return out


def growing_report(found: dict) -> str:
    """The allocation sites that grew most between the end of the warm-up and the end."""
    lines = [
        f"soak: traced Python memory {found['traced_warm_mb']:.1f} MB after warm-up, "
        f"{found['traced_end_mb']:.1f} MB at the end; sites that grew most:"
    ]
    for site in found["growing_sites"]:
        lines.append(
            f"  {site['size_diff_kb']:+9.1f} KB {site['count_diff']:+8d} blocks  {site['where']}"
        )
    return "\n".join(lines)


# The worker: the runner soaking ------------------------------------------------------------


def prepare(engines: int) -> None:
    """N engines desired running: most plain, some crashing now and then, a few hanging."""
    from engines_app.models import Engine

    crashing = max(1, int(engines * CRASH_SHARE))
    rows_ = []
    for i in range(engines):
        config: dict = {"seed": i}
        if i < crashing:
            config["crash_probability"] = CRASH_PROBABILITY
        elif i < crashing + HANGERS:
            config["hang_after_cycles"] = HANG_AFTER
        rows_.append(Engine(symbol=f"S{i:05d}USDT", config=config))
    Engine.objects.bulk_create(rows_)


class Probe:
    """What the soak measures inside the runner's process."""

    def __init__(self) -> None:
        self.rss: list[tuple[float, float]] = []  # (minutes since start, KB)
        self.traced: list[tuple[float, float]] = []  # the same, tracemalloc's total
        self.lag_p99: list[float] = []  # ms, one per minute
        self.crashes = 0
        self.recovered = 0
        self.locked = 0  # log records: rate-limited, so at least one per burst
        self.locked_writes = 0  # the writer's database errors, every one
        self._crashed: set[int] = set()
        self._lock = threading.Lock()

    def written(self, sender: object, statuses=(), errors=(), **kwargs: object) -> None:
        """An ``engines_written`` receiver: a crash, then that engine running again."""
        with self._lock:
            for error in errors:
                if error.crashed:
                    self.crashes += 1
                    self._crashed.add(error.engine_id)
            for status in statuses:
                if status.status == "running" and status.id in self._crashed:
                    self._crashed.discard(status.id)
                    self.recovered += 1

    async def sample(self, seconds: float) -> None:
        """The loop lag's p99 per minute, for ``seconds``."""
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            lags = await lag_probe(min(60.0, seconds - elapsed))
            self.lag_p99.append(percentile(lags, 99) * 1000)

    async def sample_rss(self, seconds: float) -> None:
        """RSS every few seconds, for ``seconds``."""
        started = time.perf_counter()
        process = psutil.Process()
        while (elapsed := time.perf_counter() - started) < seconds:
            self.rss.append((elapsed / 60, process.memory_info().rss / 1024))
            if tracemalloc.is_tracing():
                self.traced.append((elapsed / 60, tracemalloc.get_traced_memory()[0] / 1024))
            await asyncio.sleep(RSS_EVERY)


class LockedCounter(logging.Handler):
    """Count every log record (message or traceback) that says the database was locked."""

    def __init__(self, probe: Probe) -> None:
        super().__init__(logging.DEBUG)
        self.probe = probe

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        if LOCKED in text:
            self.probe.locked += 1


def count_write_errors(writer, probe: Probe) -> None:
    """Count every database error of the runner's writes that says the database was locked
    (its log line is rate-limited: one per outage window)."""
    handle = writer.database_error

    async def counted(exc: Exception) -> None:
        probe.locked_writes += LOCKED in str(exc)
        await handle(exc)

    writer.database_error = counted


async def snapshot_after(seconds: float) -> tracemalloc.Snapshot | None:
    """A tracemalloc snapshot ``seconds`` from now (the end of the warm-up)."""
    await asyncio.sleep(seconds)
    return tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None


def growing_sites(start: tracemalloc.Snapshot, end: tracemalloc.Snapshot) -> list[dict]:
    """The TOP_SITES allocation sites that grew most from ``start`` to ``end``."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    # With more than one frame a site is the whole call path, innermost first.
    key = "traceback" if end.traceback_limit > 1 else "lineno"
    stats = end.filter_traces(ignore).compare_to(start.filter_traces(ignore), key)
    return [
        {
            "where": " <- ".join(map(str, reversed(stat.traceback))),
            "size_diff_kb": stat.size_diff / 1024,
            "count_diff": stat.count_diff,
            "size_kb": stat.size / 1024,
        }
        for stat in stats[:TOP_SITES]
    ]


async def soak(seconds: float) -> dict:
    from engines_app.runner.lifecycle import Runner
    from engines_app.signals import engines_written

    probe = Probe()
    logging.getLogger().addHandler(LockedCounter(probe))
    engines_written.connect(probe.written)
    # Its lines are dropped: a StringIO would keep every one, and grow the RSS measured.
    runner = Runner(out=open(os.devnull, "w"))  # noqa: SIM115 (the process's lifetime)
    count_write_errors(runner.writer, probe)
    task = asyncio.create_task(runner.run())
    while not task.done() and not _mostly_running(runner.manager.summary()):
        await asyncio.sleep(0.1)
    if task.done():
        task.result()
    print("soak: running", flush=True)
    rss = asyncio.create_task(probe.sample_rss(seconds))
    lag = asyncio.create_task(probe.sample(seconds))
    warmed = asyncio.create_task(snapshot_after(warm_up(seconds / 60) * 60))
    await asyncio.gather(rss, lag)
    traced = {}
    if (start := await warmed) is not None:
        traced["growing_sites"] = growing_sites(start, tracemalloc.take_snapshot())
        traced["traced"] = probe.traced
    runner.request_exit()
    await task
    engines_written.disconnect(probe.written)
    return {
        "rss": probe.rss,
        "lag_p99_per_minute_ms": probe.lag_p99,
        "crashes": probe.crashes,
        "recovered": probe.recovered,
        "locked": max(probe.locked, probe.locked_writes),
        "write_transactions": runner.writer.write_transactions,
        **traced,
    }


def _mostly_running(summary: dict[str, int]) -> bool:
    """Nine in ten engines running: the rest may be crashing already."""
    return summary["total"] > 0 and summary["running"] >= 0.9 * summary["total"]


def slope(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope (per minute) and its noise band: two standard errors."""
    if len(samples) < 3:
        return math.nan, math.nan
    xs, ys = zip(*samples, strict=True)
    fit = statistics.linear_regression(xs, ys)
    residuals = sum((y - (fit.slope * x + fit.intercept)) ** 2 for x, y in samples)
    spread = sum((x - statistics.fmean(xs)) ** 2 for x in xs)
    return fit.slope, 2 * math.sqrt(residuals / (len(samples) - 2) / spread)


def warm_up(minutes: float) -> float:
    """The warm-up, in minutes: the first fifth of the run, capped at 5 minutes."""
    return min(5.0, minutes / 5)


def warm(samples: list[tuple[float, float]], minutes: float) -> list[tuple[float, float]]:
    """The samples after the warm-up."""
    return [(at, kb) for at, kb in samples if at >= warm_up(minutes)]


def rss_marks(samples: list[tuple[float, float]], every: float = 5.0) -> list[tuple[float, float]]:
    """RSS (MB) at the start and every ``every`` minutes: does the growth level off?"""
    marks, due = [], 0.0
    for at, kb in samples:
        if at >= due:
            marks.append((round(due), kb / 1024))
            due += every
    if samples and samples[-1][0] > marks[-1][0] + 1:
        marks.append((round(samples[-1][0]), samples[-1][1] / 1024))
    return marks


def ledger() -> dict:
    """Engines whose stored counts disagree with their Trade rows, and the fills stored."""
    from django.db import connection

    sql = """
        SELECT e.id, e.trade_count, COALESCE(e.position, 0),
               COUNT(t.id), COALESCE(MAX(t.seq), 0), COALESCE(MIN(t.seq), 1),
               COALESCE(SUM(CASE WHEN t.side = 'buy' THEN t.qty ELSE -t.qty END), 0)
        FROM engines_app_engine e LEFT JOIN engines_app_trade t ON t.engine_id = e.id
        GROUP BY e.id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql)
        found = cursor.fetchall()
    broken = [
        row_
        for row_ in found
        if row_[1] != row_[3] or row_[4] != row_[3] or row_[5] != 1 or abs(row_[2] - row_[6]) > 1e-9
    ]
    return {"lost_writes": len(broken), "trades": sum(row_[3] for row_ in found)}


def runner_job(seconds: float, report: Path, frames: int = 0) -> None:
    if frames:
        tracemalloc.start(frames)
    found = asyncio.run(soak(seconds))
    found["rss_marks"] = rss_marks(found["rss"])
    samples = warm(found.pop("rss"), seconds / 60)
    if traced := warm(found.pop("traced", []), seconds / 60):
        found["traced_slope_kb_per_min"] = slope(traced)[0]
        found["traced_warm_mb"] = traced[0][1] / 1024
        found["traced_end_mb"] = traced[-1][1] / 1024
    rate, noise = slope(samples)
    found |= ledger() | {
        "rss_slope_kb_per_min": rate,
        "rss_noise_kb_per_min": noise,
        "rss_samples": len(samples),
        "rss_end_mb": samples[-1][1] / 1024 if samples else math.nan,
    }
    report.write_text(json.dumps(found))


def operator_job(stop: Path) -> None:
    """Restart a random healthy engine every few seconds, as an operator would."""
    from engines_app.models import Engine
    from engines_app.services.engines import engine_restart

    symbols = list(
        Engine.objects.filter(config__seed__isnull=False).values_list("symbol", "config")
    )
    healthy = [symbol for symbol, config in symbols if len(config) == 1]
    chooser = random.Random(0)
    count = locked = 0
    while not stop.exists():
        try:
            engine_restart(symbol=chooser.choice(healthy), source="soak")
            count += 1
        except Exception as exc:  # counted and reported: the soak measures them
            locked += LOCKED in str(exc)
            print(f"operator: {type(exc).__name__}: {exc}", flush=True)
        print(f"operator: restarts {count}", flush=True)
        time.sleep(OPERATOR_EVERY)


def _count_locked(log: Path) -> int:
    return log.read_text().count(LOCKED)


def _last_count(log: Path) -> int:
    lines = [line for line in log.read_text().splitlines() if line.startswith("operator: restarts")]
    return int(lines[-1].rsplit(" ", 1)[1]) if lines else 0


def main(argv: list[str]) -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levipanel.settings")
    django.setup()
    job = argv[1]
    if job == "prepare":
        prepare(int(argv[2]))
    elif job == "runner":
        runner_job(float(argv[2]), Path(argv[3]), int(argv[4]) if len(argv) > 4 else 0)
    elif job == "operator":
        operator_job(Path(argv[2]))
    else:
        raise SystemExit(f"unknown job {job!r}")


if __name__ == "__main__":
    main(sys.argv)
