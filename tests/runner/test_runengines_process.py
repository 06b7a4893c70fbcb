"""`manage.py runengines` as a user runs it: a subprocess on its own SQLite file (or on the
real PostgreSQL), steered from another process, stopped with signals."""

import signal
import sqlite3
import subprocess
import time
import uuid

import pytest

from engines_app.testing import Installation
from tests.helpers import eventually_sync

FAST = {"LEVIPANEL_CYCLE_INTERVAL": "0.1", "LEVIPANEL_POLL_INTERVAL": "0.1"}


def sqlite_rows(project: Installation, sql: str, *params):
    with sqlite3.connect(project.data_dir / "levipanel.sqlite3", timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


def statuses(project: Installation) -> dict[str, str]:
    return dict(sqlite_rows(project, "SELECT symbol, status FROM engines_app_engine"))


def all_running(project: Installation, n: int = 3) -> bool:
    found = statuses(project)
    return len(found) == n and set(found.values()) == {"running"}


@pytest.fixture
def fast_project(project: Installation) -> Installation:
    project.env.update(FAST)
    return project


def test_runs_steers_and_stops_cleanly(fast_project: Installation):
    runner = fast_project.start("manage.py", "runengines", log_name="runner")
    eventually_sync(lambda: all_running(fast_project), timeout=20, message="engines never ran")

    # Another process (this one) changes desired state: applied within a second.
    changed_at = time.monotonic()
    with sqlite3.connect(fast_project.data_dir / "levipanel.sqlite3", timeout=10) as conn:
        conn.execute("UPDATE engines_app_engine SET desired_state='stopped' WHERE symbol='ETHUSDT'")
    eventually_sync(
        lambda: statuses(fast_project)["ETHUSDT"] == "stopped",
        timeout=1,
        message="desired-state change not applied within 1 s",
    )
    assert time.monotonic() - changed_at < 1.0

    runner.send_signal(signal.SIGTERM)
    assert runner.wait(15) == 0
    rows = sqlite_rows(
        fast_project,
        "SELECT symbol, status, desired_state, last_heartbeat "
        "FROM engines_app_engine ORDER BY symbol",
    )
    assert [(s, st, d) for s, st, d, _ in rows] == [
        ("BTCUSDT", "stopped", "running"),
        ("ETHUSDT", "stopped", "stopped"),
        ("SOLUSDT", "stopped", "running"),
    ]
    assert all(hb for *_, hb in rows)  # final state written
    output = runner.log_path.read_text()
    for line in (
        "Starting LeviPanel engine runner",
        "Engine BTCUSDT started",
        "Started 3/3 engines",
        "Health monitor started",
        "engine runner stopped",
    ):
        assert line in output
    logs = {p.name.split("-")[1] for p in (fast_project.data_dir / "logs").glob("engine-*.jsonl")}
    assert {"BTCUSDT", "ETHUSDT", "SOLUSDT"} <= logs

    # The same engines come back on the next start; the stopped one stays stopped.
    again = fast_project.start("manage.py", "runengines", log_name="runner2")
    eventually_sync(lambda: statuses(fast_project)["BTCUSDT"] == "running", timeout=20)
    assert statuses(fast_project)["ETHUSDT"] == "stopped"
    again.send_signal(signal.SIGINT)
    assert again.wait(15) == 0


def test_a_database_not_ready_is_waited_for(tmp_path):
    unmigrated = Installation(tmp_path / "data", FAST)
    unmigrated.data_dir.mkdir()
    runner = unmigrated.start("manage.py", "runengines", log_name="runner")
    eventually_sync(
        lambda: "Database not ready" in runner.log_path.read_text(),
        timeout=20,
        message="the runner did not say it waits for the database",
    )
    assert runner.poll() is None  # waiting, not crashed
    unmigrated.manage("migrate", "--no-input", "-v", "0")
    eventually_sync(lambda: all_running(unmigrated), timeout=20, message="engines never ran")
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(15) == 0
    unmigrated.stop()


def test_second_signal_forces_exit(fast_project: Installation):
    fast_project.env["LEVIPANEL_STOP_TIMEOUT"] = "30"
    fast_project.manage(
        "shell",
        "-c",
        "from engines_app.models import Engine; "
        "Engine.objects.create(symbol='HANGUSDT', config={'hang_after_cycles': 0})",
    )
    runner = fast_project.start("manage.py", "runengines", "--symbols", "HANGUSDT", log_name="r")
    # Its first cycle hangs, entered in the same step that reports it running: from here a
    # graceful stop would wait 30 s.
    eventually_sync(lambda: statuses(fast_project).get("HANGUSDT") == "running", timeout=20)
    runner.send_signal(signal.SIGTERM)
    # Nothing happens for a while: a real wait, as no fake clock reaches another process.
    with pytest.raises(subprocess.TimeoutExpired):
        runner.wait(0.5)
    began = time.monotonic()
    runner.send_signal(signal.SIGTERM)
    runner.wait(10)
    assert time.monotonic() - began < 5
    assert statuses(fast_project)["HANGUSDT"] == "stopped"


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("LEVIPANEL_CYCLE_INTERVAL", "0", "LEVIPANEL_CYCLE_INTERVAL: must be greater than 0"),
        ("LEVIPANEL_CYCLE_INTERVAL", "fast", "LEVIPANEL_CYCLE_INTERVAL: Not a valid number."),
        ("LEVIPANEL_SYMBOLS", "BTCUSDT,eth/usdt", "'eth/usdt': symbol must be"),
        ("LEVIPANEL_MAX_RESTARTS_PER_HOUR", "-1", "must not be negative"),
        ("LEVIPANEL_HEARTBEAT_TIMEOUT", "-5", "LEVIPANEL_HEARTBEAT_TIMEOUT: must be greater"),
        ("LEVIPANEL_CYCLE_INTERVAL_OVERRIDES", "BTCUSDT=-1", "BTCUSDT: must be greater than 0"),
        (
            "LEVIPANEL_CYCLE_INTERVAL",
            "86401",
            "LEVIPANEL_CYCLE_INTERVAL: must be greater than 0 and at most 86400",
        ),
        (
            "LEVIPANEL_CYCLE_INTERVAL_OVERRIDES",
            "BTCUSDT=90000",
            "BTCUSDT: must be greater than 0 and at most 86400",
        ),
    ],
)
def test_bad_config_is_refused_with_its_message(project: Installation, variable, value, message):
    project.env[variable] = value
    check = project.manage("check", check=False)
    assert check.returncode != 0
    assert "levipanel.E001" in check.stderr and message in check.stderr
    run = project.manage("runengines", check=False, timeout=30)
    assert run.returncode != 0
    assert message in run.stderr
    assert sqlite_rows(project, "SELECT count(*) FROM engines_app_engine") == [(0,)]


def test_bad_symbol_argument_is_refused(project: Installation):
    run = project.manage("runengines", "--symbols", "btc-usdt", check=False, timeout=30)
    assert run.returncode != 0
    assert "'btc-usdt': symbol must be" in run.stderr


@pytest.mark.postgres
def test_runs_on_postgresql(tmp_path, postgres_url):
    psycopg = pytest.importorskip("psycopg")
    name = f"levipanel_e2e_{uuid.uuid4().hex[:8]}"
    admin = postgres_url.replace("postgres://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
        project = Installation(tmp_path / "data", {"DATABASE_URL": url, **FAST})
        project.data_dir.mkdir()
        project.manage("migrate", "--no-input", "-v", "0")
        runner = project.start("manage.py", "runengines", log_name="runner")

        def pg_statuses():
            with psycopg.connect(admin.rsplit("/", 1)[0] + f"/{name}") as conn:
                return dict(conn.execute("SELECT symbol, status FROM engines_app_engine"))

        eventually_sync(
            lambda: list(pg_statuses().values()) == ["running"] * 3,
            timeout=20,
            message="engines never ran on PostgreSQL",
        )

        # Cut the runner's database connection under it: it reconnects and carries on.
        with psycopg.connect(admin, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            ).fetchall()
        assert killed, "the runner held no connection to cut"
        with psycopg.connect(admin.rsplit("/", 1)[0] + f"/{name}", autocommit=True) as conn:
            conn.execute(
                "UPDATE engines_app_engine SET desired_state = 'stopped' WHERE symbol = 'SOLUSDT'"
            )
        eventually_sync(
            lambda: pg_statuses()["SOLUSDT"] == "stopped",
            timeout=10,
            message="runner did not recover from a lost connection",
        )
        assert runner.poll() is None
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(15) == 0
        assert set(pg_statuses().values()) == {"stopped"}
        project.stop()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("LEVIPANEL_CYCLE_INTERVAL_OVERRIDES", "BTCUSDT", "must be SYMBOL=SECONDS pairs"),
        ("LEVIPANEL_CYCLE_INTERVAL_OVERRIDES", "BTCUSDT=0.5,", "must be SYMBOL=SECONDS pairs"),
        ("LEVIPANEL_LOG_DIR", "{file}/logs", "LEVIPANEL_LOG_DIR: cannot create"),
    ],
)
def test_bad_setting_is_a_clear_message_not_a_traceback(tmp_path, variable, value, message):
    (tmp_path / "file").write_text("")
    project = Installation(tmp_path / "data", {variable: value.format(file=tmp_path / "file")})
    project.data_dir.mkdir()
    command = ("runengines",) if variable == "LEVIPANEL_LOG_DIR" else ("check",)
    result = project.manage(*command, check=False)
    assert result.returncode != 0
    assert "levipanel.E001" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
