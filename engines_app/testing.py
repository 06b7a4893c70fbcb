"""A LeviPanel driven from outside, as an operator drives it: for the tests and the benchmarks.

An ``Installation`` is a data dir of its own (an embedded SQLite file unless ``DATABASE_URL``
is given) on which ``manage.py`` steps run and processes start, each in a session (and so a
process group) of its own that ``stop`` ends with every child it forked.

Nothing here imports Django or a test framework at import time: benchmark workers import this
module before Django is set up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Left out of a child's environment unless asked for: the figures and the tests are for the
# embedded default (SQLite, in-memory channel layer).
SERVICES = ("DATABASE_URL", "REDIS_URL")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a LeviPanel process on ``data_dir``, with ``extra`` on top."""
    env = {
        **os.environ,
        "LEVIPANEL_DATA_DIR": str(data_dir),
        "LEVIPANEL_LOG_DIR": str(data_dir / "logs"),
        "DJANGO_SETTINGS_MODULE": "levipanel.settings",
        "PYTHONUNBUFFERED": "1",
    }
    for name in SERVICES:
        env.pop(name, None)
    return env | dict(extra or {})


class Installation:
    """A LeviPanel on the data dir ``data_dir``: ``manage.py`` steps and processes."""

    def __init__(self, data_dir: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = environment(data_dir, extra_env)
        self.processes: list[subprocess.Popen] = []
        self.port: int | None = None
        self.password: str | None = None

    def __enter__(self) -> Installation:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def manage(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess:
        """Run one ``manage.py`` command to its end; its output is captured as text."""
        command = [sys.executable, "manage.py", *args]
        return subprocess.run(
            command,
            cwd=ROOT,
            env=self.env,
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def migrate(self) -> None:
        self.manage("migrate", "--no-input", "-v", "0")

    def demo_login(self) -> str:
        """Create the demo superuser ``admin``; keep and return its password."""
        out = self.manage("demo_login").stdout
        self.password = re.search(r"password (\S+)", out).group(1)
        return self.password

    def start(self, *args: str, log_name: str = "process") -> subprocess.Popen:
        """Start ``python ARGS`` in the background; its output goes to ``LOG_NAME.log``."""
        log_path = self.data_dir / f"{log_name}.log"
        with log_path.open("w") as log:
            # A session (and process group) of its own: stop() ends its children too, like
            # the workers qcluster forks, which would outlive a killed parent.
            process = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process.log_path = log_path
        self.processes.append(process)
        return process

    def start_panel(self) -> None:
        """Migrate, make the demo login, start the web server and the runner and wait until
        both are ready: a LeviPanel as an operator runs it (``processes[0]`` is the web
        server, ``processes[1]`` the runner)."""
        self.migrate()
        self.demo_login()
        web = self.start(*self._daphne(), log_name="web")
        runner = self.start("manage.py", "runengines", log_name="runner")
        self._wait_until_listening(web)
        self.wait_for_line(runner, "LeviPanel engine runner ready")

    def wait_for_line(self, process: subprocess.Popen, text: str, timeout: float = 30.0) -> None:
        """Wait until ``process`` has written ``text`` to its log."""
        deadline = time.monotonic() + timeout
        while text not in process.log_path.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no {text!r} from {process.args}: see {process.log_path}")
            time.sleep(0.05)

    def serve(
        self, application: str = "levipanel.asgi:application", *, log_name: str = "web"
    ) -> subprocess.Popen:
        """Start daphne on this installation's port (a free one the first time); wait until
        it listens."""
        process = self.start(*self._daphne(application), log_name=log_name)
        self._wait_until_listening(process)
        return process

    def _daphne(self, application: str = "levipanel.asgi:application") -> list[str]:
        if self.port is None:
            self.port = free_port()
        return ["-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), application]

    def _wait_until_listening(self, process: subprocess.Popen, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the web server exited: see {process.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the web server did not listen on port {self.port}")

    def login(self, username: str = "admin", password: str | None = None) -> str:
        """Log in through the login form, as a browser does; return the session id."""
        import httpx

        with httpx.Client(base_url=self.url, timeout=10) as client:
            client.get("/login/").raise_for_status()
            response = client.post(
                "/login/",
                data={
                    "username": username,
                    "password": password or self.password,
                    "csrfmiddlewaretoken": client.cookies["csrftoken"],
                    "next": "/",
                },
            )
            if response.status_code != 302 or "sessionid" not in client.cookies:
                raise RuntimeError(f"login failed: HTTP {response.status_code}")
            return client.cookies["sessionid"]

    @contextlib.contextmanager
    def dashboard(self, session: str | None = None) -> Iterator[Any]:
        """The dashboard's websocket (a ``websockets`` client), its snapshot received and
        kept as ``.snapshot``."""
        from websockets.sync.client import connect

        headers = {"Cookie": f"sessionid={session or self.login()}", "Origin": self.url}
        ws_url = f"ws://127.0.0.1:{self.port}/ws/engines/"
        # A snapshot of 10,000 engines is some MB: no limit on what the client takes.
        with connect(ws_url, additional_headers=headers, open_timeout=10, max_size=None) as socket_:
            snapshot = json.loads(socket_.recv(timeout=10))
            if snapshot["type"] != "snapshot":
                raise RuntimeError(f"expected a snapshot first, got {snapshot['type']}")
            more = snapshot
            while more["more"]:  # a large fleet's snapshot comes in several frames
                more = json.loads(socket_.recv(timeout=10))
                snapshot["engines"] += more["engines"]
            socket_.snapshot = snapshot
            yield socket_

    def stop(self, grace: float = 0.0) -> None:
        """End every process started here and its process group: after ``grace`` seconds
        of SIGTERM when given, else at once."""
        if grace:
            for process in self.processes:
                if process.poll() is None:
                    process.terminate()
            for process in self.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(grace)
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


class TransactionCounter:
    """Count write transactions at the database: SQLite's trace callback sees every
    statement; a COMMIT after a write, or a write outside BEGIN…COMMIT, is one.

    Counts on the connections opened inside ``with TransactionCounter() as counter:``.
    """

    def __init__(self) -> None:
        self.count = 0
        self._in_transaction = False
        self._wrote = False

    def __call__(self, sql: str) -> None:
        head = sql.lstrip()[:8].upper()
        if head.startswith("BEGIN"):
            self._in_transaction, self._wrote = True, False
        elif head.startswith(("COMMIT", "END")):
            self.count += self._wrote
            self._in_transaction = self._wrote = False
        elif head.startswith("ROLLBACK") and not head.startswith("ROLLBACK TO"):
            self._in_transaction = self._wrote = False
        elif head.startswith(("INSERT", "UPDATE", "DELETE", "REPLACE")):
            if self._in_transaction:
                self._wrote = True
            else:
                self.count += 1

    def __enter__(self) -> TransactionCounter:
        from django.db.backends.signals import connection_created

        connection_created.connect(self.install)
        return self

    def __exit__(self, *exc_info: object) -> None:
        from django.db.backends.signals import connection_created

        connection_created.disconnect(self.install)

    def install(self, sender: object, connection: Any, **kwargs: object) -> None:
        """A ``connection_created`` receiver: trace every new SQLite connection."""
        if connection.vendor == "sqlite":
            connection.connection.set_trace_callback(self)
