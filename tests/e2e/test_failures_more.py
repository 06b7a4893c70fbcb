"""The failure suite, continued: a dashboard websocket dropped mid-stream, and a runner whose
log disk fills up. Real processes on the real SQLite file; each scenario asserts what the
panel promises and records its figures (``figures`` fixture) for ``docs/reliability.md``.

Run the suite alone with ``python3 dev.py test -m failures``.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines_app.testing import Installation
from tests.helpers import FAST_RUNNER, TRADES_OFTEN, eventually_sync

pytestmark = pytest.mark.failures

FAST = {
    **FAST_RUNNER,
    "LEVIPANEL_MAX_RESTARTS_PER_HOUR": "1000",
    # The runner is paused while rows are compared: its leases must outlive the pause.
    "LEVIPANEL_LEASE": "60",
}
ADD = (
    "from engines_app import services\n"
    "for symbol, config in {engines!r}:\n"
    "    services.engine_add(symbol=symbol, config=config)\n"
)
REMOVE = "from engines_app import services\nservices.engine_remove(symbol={symbol!r})\n"
READY = "LeviPanel engine runner ready"
ENGINES = [(f"W{i:02d}USDT", TRADES_OFTEN) for i in range(16)] + [
    (f"C{i:02d}USDT", {**TRADES_OFTEN, "crash_probability": 0.02}) for i in range(4)
]
# What the database holds for an engine; the rest of a row (uptime, ages) ticks with time.
# What the page shows of an engine (its row in the push), compared with the database's: PnL
# to the cent, as shown; a fresh heartbeat is the frame's flush time, not pushed per row.
SHOWN = (
    "status",
    "error_count",
    "last_error",
    "position",
    "daily_pnl",
    "total_pnl",
    "trade_count",
    "desired_state",
    "status_reason",
    "runner",
)
CENTS = ("daily_pnl", "total_pnl")


def add_engines(installation: Installation, engines: list[tuple[str, dict]]) -> None:
    installation.manage("shell", "-c", ADD.format(engines=engines))


def total_trades(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return db.execute(
            "SELECT COALESCE(SUM(trade_count), 0) FROM engines_app_engine"
        ).fetchone()[0]


def acked_removal(database: Path, symbol: str) -> bool:
    """The runner has acknowledged the removal of ``symbol`` (its last push about it)."""
    sql = (
        "SELECT COUNT(*) FROM engines_app_enginecommand "
        "WHERE symbol = ? AND action = 'remove' AND acked_at IS NOT NULL"
    )
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return db.execute(sql, (symbol,)).fetchone()[0] > 0


# A websocket dropped mid-stream ---------------------------------------------------------------


class Page:
    """The dashboard page's state, kept as ``dashboard.js`` keeps it: the snapshot (and its
    parts), then numbered changes (the changed fields of a row; a new row whole), a fresh
    snapshot on a gap."""

    def __init__(self, socket_: Any) -> None:
        self.engines: dict[str, dict] = {}
        self.seq = 0
        self.frames = 0
        self.gaps = 0
        self.connect(socket_)

    def connect(self, socket_: Any) -> None:
        self.socket = socket_
        self.apply(socket_.snapshot)

    def apply(self, message: dict) -> None:
        self.frames += 1
        if message["type"] == "snapshot":
            self.seq = message["seq"]
            self.engines = {row["symbol"]: row for row in message["engines"]}
        elif message["type"] == "snapshot_more" and message["seq"] == self.seq:
            self.engines.update((row["symbol"], row) for row in message["engines"])
        elif message["type"] == "changes" and message["seq"] > self.seq:
            gap = message["seq"] != self.seq + 1
            self.seq = message["seq"]
            for row in message["engines"]:
                self.engines.setdefault(row["symbol"], {}).update(row)
            for symbol in message["removed"]:
                self.engines.pop(symbol, None)
            if gap:
                self.gaps += 1
                self.socket.send(json.dumps({"type": "snapshot"}))

    def read(self, timeout: float) -> bool:
        """Apply the next frame; False when none came within ``timeout``."""
        try:
            message = json.loads(self.socket.recv(timeout=timeout))
        except TimeoutError:
            return False
        self.apply(message)
        return True

    def shows(self, engines: int) -> bool:
        """Apply a frame if one comes soon; whether at least ``engines`` rows are shown."""
        self.read(0.2)
        return len(self.engines) >= engines

    def read_changes(self, count: int, timeout: float = 10.0) -> None:
        """Apply frames until ``count`` changes frames have come."""
        deadline, seen = time.monotonic() + timeout, 0
        while seen < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{seen} of {count} changes frames within {timeout}s")
            before = self.seq
            if self.read(0.5) and self.seq > before:
                seen += 1

    def drop(self) -> None:
        """Cut the TCP connection under the websocket: no close frame, as a lost network."""
        self.socket.socket.shutdown(socket.SHUT_RDWR)
        self.socket.socket.close()
        with contextlib.suppress(Exception):
            self.socket.close()


def mismatches(page: dict[str, dict], truth: dict[str, dict]) -> list[str]:
    """Every difference between the page's rows and the database's, on the fields shown."""
    out = [f"{symbol}: missing on the page" for symbol in truth.keys() - page.keys()]
    out += [f"{symbol}: not in the database" for symbol in page.keys() - truth.keys()]
    for symbol in truth.keys() & page.keys():
        shown = {f: round(truth[symbol][f], 2) if f in CENTS else truth[symbol][f] for f in SHOWN}
        out += [
            f"{symbol}.{field}: page {page[symbol][field]!r}, database {value!r}"
            for field, value in shown.items()
            if page[symbol][field] != value
        ]
    return out


def drain(socket_: Any) -> None:
    """Read and forget every frame until the connection closes."""
    with contextlib.suppress(Exception):
        while True:
            socket_.recv()


@contextlib.contextmanager
def paused(process: subprocess.Popen) -> Iterator[None]:
    """The runner stopped in its tracks (SIGSTOP): the database holds still."""
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)


def test_a_dropped_websocket_resyncs_to_the_database(project: Installation, figures):
    project.env.update(FAST)
    project.start_panel()
    runner = project.processes[1]
    add_engines(project, ENGINES)
    token = project.manage("apitoken", "create", "admin", "failures").stdout.strip()
    api = httpx.Client(
        base_url=project.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    database = project.data_dir / "levipanel.sqlite3"
    session = project.login()
    rng = random.Random(12)
    rounds, resyncs, compared, wrong, gaps = 3, [], 0, [], 0
    running = [symbol for symbol, _ in ENGINES]

    def truth() -> dict[str, dict]:
        response = api.get("/engines/status")
        response.raise_for_status()
        return {row["symbol"]: row for row in response.json()["engines"]}

    with contextlib.ExitStack() as stack:
        # Another operator's page stays open, so the web process keeps pushing while ours is
        # away: what it pushes then is lost to ours.
        other = stack.enter_context(project.dashboard(session))
        threading.Thread(target=drain, args=(other,), daemon=True).start()
        page = Page(stack.enter_context(project.dashboard(session)))
        eventually_sync(lambda: page.shows(len(ENGINES)), timeout=30)
        for _ in range(rounds):
            # Frames flow for a random while, then the network goes.
            until = time.monotonic() + rng.uniform(0.5, 3.0)
            while time.monotonic() < until:
                page.read(0.1)
            page.drop()
            # Missed while away: fills, an engine stopped and one removed (only the frame
            # that was lost, or the new snapshot, can tell the page it is gone).
            trades = total_trades(database)
            stopped, removed = (running.pop(rng.randrange(len(running))) for _ in range(2))
            assert api.post(f"/engines/stop/{stopped}").status_code == 202
            project.manage("shell", "-c", REMOVE.format(symbol=removed))
            eventually_sync(lambda s=stopped: truth()[s]["status"] == "stopped", timeout=30)
            eventually_sync(lambda s=removed: acked_removal(database, s), timeout=30)
            eventually_sync(lambda t=trades: total_trades(database) > t, timeout=30)
            started = time.perf_counter()
            page.connect(stack.enter_context(project.dashboard(session)))
            resyncs.append(time.perf_counter() - started)
            page.read_changes(3)
            with paused(runner):
                # The broadcaster sends what committed before the pause within a look or two.
                problems: list[str] = []

                def settled() -> bool:
                    nonlocal problems
                    while page.read(0.3):
                        pass
                    problems = mismatches(page.engines, truth())
                    return not problems

                with contextlib.suppress(AssertionError):
                    eventually_sync(settled, timeout=10)
                compared += len(page.engines)
                wrong += problems
        gaps = page.gaps
    api.close()
    assert runner.poll() is None, runner.log_path.read_text()[-2000:]
    assert not wrong, wrong[:20]
    scenario = "websocket dropped mid-stream"
    worst = max(resyncs) * 1000
    figures.record(
        scenario, f"reconnect → snapshot applied, worst of {rounds} drops", worst, "ms", "< 1000"
    )
    figures.record(scenario, "rows compared after the reconnects", compared, "rows", "> 0")
    figures.record(scenario, "fields different from the database", len(wrong), "fields", "0")
    figures.record(scenario, "gaps in seq seen (each answered by a snapshot)", gaps, "", "")
    assert worst < 5000


# A runner's disk full -----------------------------------------------------------------------


def can_mount_tmpfs(where: Path) -> bool:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
    )
    return done.returncode == 0


@pytest.fixture
def small_disk(project: Installation) -> Iterator[Path]:
    """A 1 MB tmpfs as the runner's log dir (mounting needs root: skipped without)."""
    logs = project.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    try:
        mounted = can_mount_tmpfs(logs)
    except FileNotFoundError:
        mounted = False
    if not mounted:
        pytest.skip("needs `mount -t tmpfs` (root) to make a small disk for the log dir")
    try:
        yield logs
    finally:
        project.stop()  # nothing may hold a file on it
        subprocess.run(["umount", "-l", str(logs)], check=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; return it."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 4096)
    return filler


def log_lines(disk: Path) -> int:
    return sum(
        path.read_bytes().count(b"\n") for path in disk.glob("engine-*.jsonl") if path.is_file()
    )


def test_a_full_log_disk_is_reported_once_and_engines_keep_trading(
    project: Installation, small_disk: Path, figures
):
    project.env.update(FAST)
    add_engines(project, ENGINES[:10])
    runner = project.start("manage.py", "runengines", log_name="runner")
    project.wait_for_line(runner, READY)
    database = project.data_dir / "levipanel.sqlite3"
    eventually_sync(lambda: log_lines(small_disk) > 20, timeout=30)

    filler = fill(small_disk)
    full_at = time.perf_counter()
    trades = total_trades(database)
    output = runner.log_path
    eventually_sync(lambda: "Engine logs cannot be written" in output.read_text(), timeout=30)
    # Trading goes on while lines are dropped: many fills (each a line) later ...
    eventually_sync(lambda: total_trades(database) > trades + 50, timeout=60)
    lines_before = log_lines(small_disk)
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        statuses = dict(db.execute("SELECT symbol, status FROM engines_app_engine").fetchall())
    assert runner.poll() is None

    filler.unlink()
    freed, fills = time.perf_counter(), total_trades(database) - trades
    eventually_sync(lambda: log_lines(small_disk) > lines_before, timeout=30)
    resumed = time.perf_counter() - freed
    eventually_sync(lambda: "Engine logs are written again" in output.read_text(), timeout=30)
    text = output.read_text()
    reports = text.count("Engine logs cannot be written")
    lost = int(re.search(r"written again in \S+: (\d+) lines lost", text).group(1))
    storm = text.count("--- Logging error ---")
    full_for = freed - full_at
    assert runner.poll() is None
    assert reports == 1 and storm == 0, text[-3000:]
    crashing = {symbol for symbol, config in ENGINES if "crash_probability" in config}
    assert all(
        status == "running" for symbol, status in statuses.items() if symbol not in crashing
    ), statuses
    assert lost > 0
    cut = [
        line
        for path in small_disk.glob("engine-*.jsonl")
        for line in path.read_text().splitlines()
        if not _is_json(line)
    ]
    assert len(cut) <= len(ENGINES[:10]) + 1, cut  # at most one cut line per file

    scenario = "log disk full"
    figures.record(scenario, "time the disk was full", full_for, "s", "")
    figures.record(scenario, "lines lost while full", lost, "lines", "> 0, said once resumed")
    figures.record(scenario, "errors reported", reports, "", "1")
    figures.record(scenario, "fills while full (engines trading on)", fills, "fills", "> 0")
    figures.record(scenario, "time to resume after the disk frees", resumed * 1000, "ms", "< 2000")
    figures.record(scenario, "cut lines left in the files", len(cut), "lines", "<= 1 per file")
    assert resumed < 10


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
