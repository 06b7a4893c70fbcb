"""The failure suite: real processes (daphne, `runengines`, `qcluster`) on the real SQLite
file, PostgreSQL and Redis, each scenario a fault the panel promises to survive. Each asserts
what it promises and records its figures (``figures`` fixture) for ``docs/reliability.md``.

Run it alone with ``python3 dev.py test -m failures``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from engines_app.testing import Installation, free_port
from tests.helpers import (
    FAST_RUNNER,
    IN_CI,
    SHOWN_HEARTBEATS,
    TRADES_OFTEN,
    TcpProxy,
    eventually_sync,
    ledger_problems,
)

pytestmark = pytest.mark.failures


# Crashes a second into every run: through its restart budget (5 an hour) within the run.
CRASHES = {**TRADES_OFTEN, "crash_after_cycles": 5}
ADD = (
    "from engines_app import services\n"
    "for symbol, config in {engines!r}:\n"
    "    services.engine_add(symbol=symbol, config=config)\n"
)
ACTIONS = ("start", "stop", "restart")
CONTENTION_SECONDS = 60.0
# An extra writer calling the services in a loop, as the shell or a script does: it prints
# the ids of the commands it got and every database error it saw.
SERVICE_WRITER = """
import json, random, sys, time
import django
django.setup()
from django.db import OperationalError
from engines_app import services
until, seed, symbols = sys.argv[1:4]
rng, symbols, until = random.Random(seed), symbols.split(","), float(until)
ids, errors, attempts = [], [], 0
while time.time() < until:
    symbol, action = rng.choice(symbols), rng.choice(["start", "stop", "restart", "configure"])
    attempts += 1
    try:
        if action == "configure":
            command = services.engine_configure(
                symbol=symbol, cycle_interval=rng.choice([0.2, 0.3, 0.4]), source="writer")
        else:
            command = getattr(services, "engine_" + action)(symbol=symbol, source="writer")
        if command is not None:
            ids.append(command.id)
    except OperationalError as exc:
        errors.append(str(exc))
    time.sleep(0.02)
print("RESULT " + json.dumps({"attempts": attempts, "ids": ids, "errors": errors}))
"""
# An extra writer posting to the API, as a script with a token does.
API_WRITER = """
import json, random, sys, time
import httpx
url, token, seed, symbols, until = sys.argv[1:6]
rng, symbols, until = random.Random(seed), symbols.split(","), float(until)
ids, errors, attempts = [], [], 0
with httpx.Client(base_url=url, headers={"Authorization": "Bearer " + token}, timeout=60) as c:
    while time.time() < until:
        attempts += 1
        action = rng.choice(["start", "stop", "restart"])
        response = c.post("/engines/%s/%s" % (action, rng.choice(symbols)))
        if response.status_code == 202:
            ids.append(response.json()["command_id"])
        else:
            errors.append("%s %s" % (response.status_code, response.text[:200]))
        time.sleep(0.02)
print("RESULT " + json.dumps({"attempts": attempts, "ids": ids, "errors": errors}))
"""


def utc_now() -> str:
    """Now as the SQLite file stores times (naive UTC), to compare with its columns."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class Panel:
    """A LeviPanel on its SQLite file (web server and runner as processes), steered as an
    operator steers it: API calls with a token, admin actions of a logged-in session."""

    def __init__(self, installation: Installation) -> None:
        self.installation = installation
        self.db = sqlite3.connect(installation.data_dir / "levipanel.sqlite3", timeout=20)
        self.db.isolation_level = None  # autocommit: every read sees the latest commit
        self.runner: subprocess.Popen | None = None
        self.runs = 0
        self.token = ""
        self.admin: httpx.Client | None = None
        self.api: httpx.Client | None = None

    def add(self, engines: list[tuple[str, dict]]) -> None:
        self.installation.manage("shell", "-c", ADD.format(engines=engines))

    def start_web(self) -> None:
        installation = self.installation
        installation.demo_login()
        self.token = installation.manage("apitoken", "create", "admin", "failures").stdout.strip()
        installation.serve()
        self.api = httpx.Client(
            base_url=installation.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        self.admin = httpx.Client(base_url=installation.url, timeout=30)
        self.admin.cookies.set("sessionid", installation.login())
        self.admin.get("/admin/engines_app/engine/").raise_for_status()  # sets csrftoken

    def start_runner(self) -> subprocess.Popen:
        self.runs += 1
        self.installation.env["LEVIPANEL_RUNNER_NAME"] = f"runner-{self.runs}"
        self.runner = self.installation.start(
            "manage.py", "runengines", log_name=f"runner-{self.runs}"
        )
        return self.runner

    def kill_runner(self) -> None:
        self.runner.send_signal(signal.SIGKILL)
        self.runner.wait(10)

    def rows(self, sql: str, *args) -> list[tuple]:
        return self.db.execute(sql, args).fetchall()

    def command_api(self, action: str, symbol: str) -> httpx.Response:
        return self.api.post(f"/engines/{action}/{symbol}")

    def command_admin(self, action: str, symbol: str) -> httpx.Response:
        (pk,) = self.rows("SELECT id FROM engines_app_engine WHERE symbol = ?", symbol)[0]
        return self.admin.post(
            "/admin/engines_app/engine/",
            data={
                "action": f"{action}_engines",
                "_selected_action": str(pk),
                "index": "0",
                "csrfmiddlewaretoken": self.admin.cookies["csrftoken"],
            },
        )

    def running_since(self, since: str, symbols: set[str]) -> bool:
        """Every engine of ``symbols`` that is wanted running runs, started after ``since``."""
        rows = self.rows(
            "SELECT symbol, status, started_at FROM engines_app_engine "
            "WHERE desired_state = 'running'"
        )
        return all(
            status == "running" and started_at is not None and started_at > since
            for symbol, status, started_at in rows
            if symbol in symbols
        )

    def unacknowledged(self, *sources: str) -> list[tuple]:
        """Commands (of ``sources``, or all) the runner has not acknowledged yet."""
        rows = self.rows("SELECT id, source FROM engines_app_enginecommand WHERE acked_at IS NULL")
        return [row for row in rows if not sources or row[1] in sources]

    def acks(self) -> dict[int, tuple]:
        """id -> (acked_at, acked_by, outcome) of every acknowledged command."""
        found = self.rows(
            "SELECT id, acked_at, acked_by, outcome FROM engines_app_enginecommand "
            "WHERE acked_at IS NOT NULL"
        )
        return {id_: rest for id_, *rest in found}

    def close(self) -> None:
        for client in (self.api, self.admin):
            if client is not None:
                client.close()
        self.db.close()


@pytest.fixture
def panel(project: Installation) -> Iterator[Panel]:
    project.env.update(FAST_RUNNER)
    panel = Panel(project)
    try:
        yield panel
    finally:
        panel.close()


def restarts_over_budget(panel: Panel, limit: int = 5) -> list[str]:
    """Engines with more than ``limit`` restarts since an operator last reset their budget
    (the whole run is shorter than the hour the limit counts over)."""
    rows = panel.rows(
        "SELECT e.symbol, count(r.id) FROM engines_app_engine e "
        "JOIN engines_app_enginerestart r ON r.engine_id = e.id "
        "WHERE e.failures_reset_at IS NULL OR r.at >= e.failures_reset_at GROUP BY e.symbol"
    )
    return [f"{symbol}: {n} restarts" for symbol, n in rows if n > limit]


def test_runner_killed_ten_times_loses_and_doubles_nothing(panel: Panel, figures):
    scenario = "runner kill -9 ×10, 50 engines, 100 commands"
    rng = random.Random(12)
    steady = [f"K{n:02d}USDT" for n in range(48)]
    # Two engines burn their restart budget meanwhile: kills must not give them a fresh one.
    # They may be in backoff or failed, so "running again" is asked of the others.
    crashy = ["X00USDT", "X01USDT"]
    panel.add([(s, TRADES_OFTEN) for s in steady] + [(s, CRASHES) for s in crashy])
    panel.start_web()
    panel.start_runner()
    eventually_sync(
        lambda: panel.running_since("", set(steady)), timeout=60, message="never all running"
    )

    given: dict[str, int] = Counter()
    api_ids: list[int] = []
    last_action: dict[str, str] = {}
    acks_seen: dict[int, tuple] = {}
    back_after: list[float] = []

    def give(count: int, pause: float) -> None:
        for _ in range(count):
            action, symbol = rng.choice(ACTIONS), rng.choice(steady)
            if rng.random() < 0.5:
                response = panel.command_api(action, symbol)
                assert response.status_code == 202, response.text
                api_ids.append(response.json()["command_id"])
                given["api"] += 1
            else:
                response = panel.command_admin(action, symbol)
                assert response.status_code == 302, response.text
                given["admin"] += 1
            last_action[symbol] = action
            time.sleep(rng.uniform(0.0, pause))  # pacing: commands land at random moments

    def acks_unchanged() -> None:
        """An acknowledged command is never acknowledged (carried out) again."""
        acks = panel.acks()
        changed = [i for i, ack in acks_seen.items() if acks.get(i) != ack]
        assert not changed, f"commands acknowledged twice: {changed}"
        acks_seen.update(acks)

    for _ in range(10):
        give(7, pause=0.3)  # while it runs: the kill comes at a random moment among them
        killed_at, since = time.monotonic(), utc_now()
        panel.kill_runner()
        give(3, pause=0.0)  # while it is down: they wait in the database
        panel.start_runner()
        eventually_sync(
            lambda since=since: panel.running_since(since, set(steady)),
            timeout=60,
            message="not every engine wanted running runs again after the kill",
        )
        back_after.append(time.monotonic() - killed_at)
        acks_unchanged()

    eventually_sync(
        lambda: not panel.unacknowledged("api", "admin"),
        timeout=30,
        message="commands left unacknowledged",
    )
    acks_unchanged()

    def as_last_asked() -> bool:
        """Each engine commanded is where its last command wanted it: carried out."""
        statuses = dict(panel.rows("SELECT symbol, status FROM engines_app_engine"))
        return all(
            statuses[symbol] == ("stopped" if action == "stop" else "running")
            for symbol, action in last_action.items()
        )

    eventually_sync(as_last_asked, timeout=30, message="an engine is not as last commanded")
    panel.runner.terminate()
    assert panel.runner.wait(30) == 0

    commands = panel.rows(
        "SELECT id, source, outcome, acked_at FROM engines_app_enginecommand "
        "WHERE source IN ('api', 'admin')"
    )
    by_source = Counter(source for _, source, _, _ in commands)
    carried_out = [c for c in commands if c[3] is not None and c[2] == "done"]
    lost = sum(given.values()) - len(carried_out)
    stored_api = {c[0] for c in commands if c[1] == "api"}
    problems = ledger_problems(panel.db)
    fills = panel.rows("SELECT count(*) FROM engines_app_trade")[0][0]
    over_budget = restarts_over_budget(panel)
    crashy_restarts = panel.rows(
        "SELECT count(*) FROM engines_app_enginerestart r JOIN engines_app_engine e "
        "ON r.engine_id = e.id WHERE e.symbol IN (?, ?)",
        *crashy,
    )[0][0]

    failed = panel.rows(
        "SELECT count(*) FROM engines_app_engine WHERE status = 'failed' AND symbol IN (?, ?)",
        *crashy,
    )[0][0]

    record = figures.record
    record(scenario, "commands given", sum(given.values()), "commands", "100")
    record(scenario, "commands carried out", len(carried_out), "commands", "= given")
    record(scenario, "commands lost", lost, "commands", "0")
    record(scenario, "fills stored", fills, "fills", "> 0")
    record(scenario, "ledger mismatches", len(problems), "", "0")
    record(scenario, "restarts of the 2 crashing engines", crashy_restarts, "", "≤ 10")
    record(scenario, "crashing engines failed at their budget", failed, "of 2", "")
    # Started again at once (under `dev.py run` the Procfile waits 2 s first).
    record(scenario, "kill → all running again, p50", statistics.median(back_after), "s", "")
    record(scenario, "kill → all running again, max", max(back_after), "s", "< 60 s")

    assert sum(given.values()) == 100
    assert by_source == given and set(api_ids) <= stored_api
    assert len(carried_out) == len(commands) == 100, Counter(c[2] for c in commands)
    assert lost == 0
    assert problems == []
    assert fills > 0
    assert over_budget == []


def writer_result(process: subprocess.Popen) -> dict:
    """What a writer process printed at its end."""
    assert process.wait(CONTENTION_SECONDS + 60) == 0, process.log_path.read_text()[-2000:]
    line = process.log_path.read_text().rsplit("RESULT ", 1)[-1]
    return json.loads(line)


def test_sqlite_under_contention_locks_out_no_user_and_loses_no_write(panel: Panel, figures):
    scenario = f"SQLite contention: web, runner, tasks + 4 writers, {CONTENTION_SECONDS:g} s"
    trading = [f"C{n:02d}USDT" for n in range(30)]
    steered = [f"W{n:02d}USDT" for n in range(8)]
    panel.add([(s, TRADES_OFTEN) for s in trading + steered])
    panel.start_web()
    panel.start_runner()
    installation = panel.installation
    installation.start("manage.py", "qcluster", log_name="tasks")
    eventually_sync(
        lambda: panel.running_since("", set(trading)), timeout=60, message="never all running"
    )

    until = str(time.time() + CONTENTION_SECONDS)
    writers = [
        installation.start(
            "-c",
            SERVICE_WRITER,
            until,
            str(n),
            ",".join(steered[n::4]),
            log_name=f"writer-{n}",
        )
        for n in (0, 1)
    ] + [
        installation.start(
            "-c",
            API_WRITER,
            installation.url,
            panel.token,
            str(n),
            ",".join(steered[n::4]),
            until,
            log_name=f"writer-{n}",
        )
        for n in (2, 3)
    ]
    results = [writer_result(writer) for writer in writers]
    ids = [i for result in results for i in result["ids"]]
    eventually_sync(
        lambda: not panel.unacknowledged(),
        timeout=60,
        message="commands left unacknowledged",
    )
    panel.runner.terminate()
    assert panel.runner.wait(30) == 0

    stored = {
        id_
        for (id_,) in panel.rows(
            "SELECT id FROM engines_app_enginecommand WHERE acked_at IS NOT NULL"
        )
    }
    errors = [error for result in results for error in result["errors"]]
    logs = {
        process.log_path.name: process.log_path.read_text() for process in installation.processes
    }
    locked = sum(text.count("database is locked") for text in logs.values())
    attempts = sum(result["attempts"] for result in results)
    problems = ledger_problems(panel.db)

    record = figures.record
    record(scenario, "writes attempted", attempts, "writes", "")
    record(scenario, "writes answered (a command id)", len(ids), "writes", "")
    record(
        scenario, "writes stored and acknowledged", len(stored & set(ids)), "writes", "= answered"
    )
    record(scenario, '"database is locked" seen', locked, "", "0")
    record(scenario, "errors seen by a writer", len(errors), "", "0")
    record(scenario, "ledger mismatches", len(problems), "", "0")

    assert errors == []
    assert locked == 0, [name for name, text in logs.items() if "database is locked" in text]
    assert len(ids) == len(set(ids)) > 0
    assert set(ids) <= stored
    assert problems == []


OUTAGE = 5.0
# A lease well beyond the outage: the runner must ride it out, not fence itself.
RIDES_OUT = {**FAST_RUNNER, "LEVIPANEL_LEASE": "30", "LEVIPANEL_RUNNER_NAME": "rider"}


class Postgres:
    """The test's own reads of a PostgreSQL database, connecting again after a restart."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: psycopg.Connection | None = None

    def rows(self, sql: str, *args) -> list[tuple]:
        try:
            if self.connection is None or self.connection.closed:
                self.connection = psycopg.connect(self.url, autocommit=True)
            return self.connection.execute(sql, args).fetchall()
        except psycopg.OperationalError:
            self.close()
            raise

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def postgres_cluster() -> list[str]:
    """``pg_ctlcluster VERSION main`` of the local server, or skip (fail in CI)."""
    clusters = Path("/etc/postgresql")
    if shutil.which("pg_ctlcluster") is None or not clusters.is_dir():
        message = "no pg_ctlcluster here: the PostgreSQL restart needs the Debian cluster tools"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    version = sorted(os.listdir(clusters))[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def postgres_ready() -> bool:
    done = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], check=False)
    return done.returncode == 0


def restart_postgres() -> None:
    """Restart the local PostgreSQL server, and make sure it runs again whatever happens."""
    cluster = postgres_cluster()
    try:
        subprocess.run([*cluster, "restart"], check=True, timeout=120, capture_output=True)
    finally:
        if not postgres_ready():
            subprocess.run([*cluster, "start"], check=False, timeout=120)
    eventually_sync(postgres_ready, timeout=60, message="PostgreSQL did not come back")


@pytest.mark.postgres
@pytest.mark.parametrize("fault", ["connection cut", "server restart"])
def test_a_database_outage_is_ridden_out_and_every_fill_arrives_once(
    fault: str, tmp_path: Path, postgres_database: str, figures
):
    scenario = f"PostgreSQL {fault}, 20 engines"
    symbols = [f"P{n:02d}USDT" for n in range(20)]
    db = Postgres(postgres_database)
    with (
        TcpProxy("127.0.0.1", 5432) as proxy,
        Installation(
            tmp_path / "runner",
            {
                **RIDES_OUT,
                "DATABASE_URL": re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", postgres_database),
            },
        ) as installation,
    ):
        installation.manage("shell", "-c", ADD.format(engines=[(s, TRADES_OFTEN) for s in symbols]))
        runner = installation.start("manage.py", "runengines", log_name="runner")

        def all_running() -> bool:
            found = db.rows("SELECT status FROM engines_app_engine")
            return len(found) == len(symbols) and {status for (status,) in found} == {"running"}

        def trades() -> int:
            return db.rows("SELECT count(*) FROM engines_app_trade")[0][0]

        eventually_sync(all_running, timeout=60, message="never all running")
        before = trades()
        eventually_sync(lambda: trades() > before, timeout=30, message="no fill stored")

        away_at, began = datetime.now(UTC), time.monotonic()
        if fault == "connection cut":
            proxy.cut()
            time.sleep(OUTAGE)  # the fault: the runner is cut off this long
            proxy.restore()
        else:
            db.close()
            restart_postgres()
        outage = time.monotonic() - began
        back_at = datetime.now(UTC)
        (db_now,) = db.rows("SELECT now()")[0]

        def written_since() -> bool:
            return db.rows("SELECT max(last_seen) FROM engines_app_runnerheartbeat")[0][0] > db_now

        eventually_sync(written_since, timeout=30, message="the runner wrote nothing after")
        first_write = time.monotonic() - began - outage
        after = trades()
        eventually_sync(lambda: trades() > after, timeout=30, message="no fill stored after")
        assert all_running()
        runner.terminate()
        assert runner.wait(30) == 0

        log = runner.log_path.read_text()
        during = db.rows(
            "SELECT count(*) FROM engines_app_trade WHERE time BETWEEN %s AND %s", away_at, back_at
        )[0][0]
        doubled = db.rows("SELECT count(*) - count(DISTINCT fill_id) FROM engines_app_trade")[0][0]
        restarts = db.rows("SELECT count(*) FROM engines_app_enginerestart")[0][0]
        crashed = db.rows("SELECT count(*) FROM engines_app_engineerror WHERE crashed")[0][0]
        problems = ledger_problems(db.connection)
        db.close()

    record = figures.record
    record(scenario, "outage", outage, "s", "")
    record(scenario, "first write after the database is back", first_write, "s", "")
    record(scenario, "fills made during the outage, stored after", during, "fills", "> 0")
    record(scenario, "fills doubled", doubled, "fills", "0")
    record(scenario, "engines restarted or crashed over it", restarts + crashed, "", "0")
    record(scenario, "ledger mismatches", len(problems), "", "0")

    assert problems == []
    assert doubled == 0
    assert restarts == crashed == 0
    assert during > 0
    assert "self-fenced" not in log and "stopped here" not in log, log[-3000:]


class Redis:
    """A Redis server of this test's own, on a free port and in its own directory (without
    persistence, as CI starts it): stopped and started again on the same port without
    touching the Redis other tests and people share."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("redis-server") is None:
            if IN_CI:
                pytest.fail("redis-server is not installed (CI=true: it is required)")
            pytest.skip("redis-server is not installed: install it to run this test")
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        # No retries: redis-py's default (3, backing off 1 s to 10 s) would see the server
        # come and go seconds late.
        self.client = redis.Redis(port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
        self.log = directory / "redis.log"
        self.command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ]
        self.process: subprocess.Popen | None = None

    def up(self) -> bool:
        try:
            return self.client.ping()
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        with contextlib.suppress(redis.ConnectionError):
            self.client.shutdown(nosave=True)
        if self.process is not None:
            self.process.wait(10)
        eventually_sync(lambda: not self.up(), timeout=10, message="Redis did not stop")

    def start(self) -> None:
        if not self.up():
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(self.command, stdout=log, stderr=log)
        eventually_sync(self.up, timeout=30, message="Redis did not come back")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


class DashboardWatcher(threading.Thread):
    """A dashboard's websocket as the page keeps it: on a close it connects again after
    0.5 s, doubled up to 4 s (back to 0.5 s once open). Notes when each push arrives."""

    def __init__(self, installation: Installation, session: str) -> None:
        super().__init__(daemon=True)
        self.url = f"ws://127.0.0.1:{installation.port}/ws/engines/"
        self.headers = {"Cookie": f"sessionid={session}", "Origin": installation.url}
        self.pushes: list[float] = []  # time.monotonic() of each "changes" frame
        self.closes = 0
        self.finished = threading.Event()

    def run(self) -> None:
        attempts = 0
        while not self.finished.is_set():
            try:
                with connect(self.url, additional_headers=self.headers, open_timeout=5) as ws:
                    attempts = 0
                    while not self.finished.is_set():
                        with contextlib.suppress(TimeoutError):
                            if json.loads(ws.recv(timeout=0.2))["type"] == "changes":
                                self.pushes.append(time.monotonic())
            except (WebSocketException, OSError, TimeoutError):
                self.closes += 1
            self.finished.wait(min(4.0, 0.5 * 2**attempts))  # dashboard.js's schedule
            attempts += 1

    def pushed_after(self, moment: float) -> float | None:
        return next((at for at in self.pushes if at > moment), None)


@pytest.mark.redis
def test_redis_stopped_and_started_keeps_engines_running_and_dashboards_pushed(
    project: Installation, private_redis: Redis, figures
):
    scenario = "Redis stopped 5 s and started, 10 engines, one dashboard"
    server = private_redis
    project.env.update(FAST_RUNNER, REDIS_URL=server.url)
    panel = Panel(project)
    symbols = [f"R{n:02d}USDT" for n in range(10)]
    panel.add([(s, TRADES_OFTEN) for s in symbols])
    project.start_panel()
    eventually_sync(
        lambda: panel.running_since("", set(symbols)), timeout=60, message="not running"
    )
    watcher = DashboardWatcher(project, project.login())
    watcher.start()
    try:
        eventually_sync(lambda: watcher.pushes, timeout=10, message="no push before the fault")

        def heartbeat() -> str:
            return max(beat for _, beat in panel.rows(SHOWN_HEARTBEATS) if beat)

        def statuses() -> set[str]:
            return {status for (status,) in panel.rows("SELECT status FROM engines_app_engine")}

        stopped_at = time.monotonic()
        try:
            server.stop()
            down_at = time.monotonic()
            before = heartbeat()
            eventually_sync(lambda: heartbeat() > before, timeout=OUTAGE, message="no heartbeat")
            seen = statuses()
            time.sleep(max(0.0, stopped_at + OUTAGE - time.monotonic()))  # the fault's length
        finally:
            server.start()
        back_at = time.monotonic()
        outage = back_at - stopped_at
        pushed = eventually_sync(
            lambda: watcher.pushed_after(back_at), timeout=30, message="no push after Redis"
        )
        seen |= statuses()
    finally:
        watcher.finished.set()
        watcher.join(15)
        panel.close()
    alive = [process.poll() is None for process in project.processes]
    # The broadcaster and its pages share the web process: no Redis between them.
    while_down = sum(down_at < at < back_at for at in watcher.pushes)

    record = figures.record
    record(scenario, "outage", outage, "s", "")
    record(scenario, "pushes while Redis was down", while_down, "", "> 0")
    record(scenario, "push resumed after Redis returned", pushed - back_at, "s", "< 5 s")
    record(scenario, "dashboard reconnects", watcher.closes, "", "0")
    record(scenario, "engine statuses seen", ", ".join(sorted(seen)), "", "running")

    assert seen == {"running"}
    assert alive == [True, True]
    assert watcher.closes == 0
    assert while_down > 0
    assert pushed - back_at < 5.0
