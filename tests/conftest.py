"""Shared fixtures. Real parts only: SQLite files, subprocesses, the local PostgreSQL and
Redis (skipped with a reason on a laptop without them, a failure in CI)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_URL = os.environ.get(
    "LEVIPANEL_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("LEVIPANEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CHROMIUM = Path(os.environ.get("LEVIPANEL_CHROMIUM", "/usr/bin/chromium"))


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    """Skip when a service is absent on a laptop; fail in CI, where it must be there."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the service is required)")
    pytest.skip(f"{message}: start it to run this test")


@pytest.fixture
def postgres_url() -> str:
    need_service("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


@pytest.fixture
def redis_url() -> str:
    need_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"Chromium is not installed at {CHROMIUM} (CI=true: it is required)")
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Project:
    """A LeviPanel installation in a temp data dir, driven as a user drives it."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "LEVIPANEL_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "levipanel.settings",
            **(extra_env or {}),
        }
        if "DATABASE_URL" not in (extra_env or {}):
            self.env.pop("DATABASE_URL", None)  # the embedded default unless asked otherwise
        self.processes: list[subprocess.Popen] = []

    def manage(self, *args: str, check: bool = True, timeout: float = 60):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=check,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def start(self, *args: str, log_name: str = "process") -> subprocess.Popen:
        log = open(self.data_dir / f"{log_name}.log", "w")  # noqa: SIM115 (closed at stop)
        # A session (and process group) of its own: stop_all ends its children too, like
        # the workers qcluster forks, which would outlive a killed parent.
        process = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        process.log_path = self.data_dir / f"{log_name}.log"
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    """A fresh installation with a migrated SQLite file of its own."""
    proj = Project(tmp_path / "data")
    proj.data_dir.mkdir()
    proj.manage("migrate", "--no-input", "-v", "0")
    yield proj
    proj.stop_all()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = ""):
    """Poll until predicate() is truthy; return its value or fail with ``message``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(message or f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def pytest_collection_modifyitems(config, items):
    """Browser tests last: Playwright's session loop breaks later asyncio tests."""
    browser = [item for item in items if "page" in getattr(item, "fixturenames", ())
               or item.get_closest_marker("browser")]  # fmt: skip
    items[:] = [item for item in items if item not in browser] + browser
