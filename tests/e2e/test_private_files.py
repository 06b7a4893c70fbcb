"""Files holding sessions, secrets and logs are their owner's only, from the moment they exist."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines_app.testing import ROOT, Installation, environment
from tests.helpers import eventually_sync

# Records, in a process of its own, every chmod and every file opened in the data dir.
AUDITED = """
import json, os, sys
data_dir, events = os.environ["LEVIPANEL_DATA_DIR"], []

def hook(event, args):
    if event in ("os.chmod", "open") and str(args[0]).startswith(data_dir):
        events.append([event, str(args[0]), args[2] if event == "open" else args[1]])

sys.addaudithook(hook)
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
call_command("demo_login")
print(json.dumps(events))
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The common umask (022): files made without a mode of their own would be 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_data_dir_database_secrets_and_logs_are_private(tmp_path):
    with Installation(tmp_path / "data") as installation:
        installation.migrate()
        installation.demo_login()
        runner = installation.start("manage.py", "runengines", log_name="runner")
        installation.wait_for_line(runner, "LeviPanel engine runner ready")
        logs = installation.data_dir / "logs"
        eventually_sync(lambda: len(list(logs.glob("engine-*.jsonl"))) == 3, timeout=20)
        data = installation.data_dir
        database = data / "levipanel.sqlite3"
        assert mode(data) == 0o700
        files = [
            database,
            data / "levipanel.sqlite3-wal",  # present while the runner is connected
            data / "levipanel.sqlite3-shm",
            data / ".secret_key",
            data / ".demo_password",
            *logs.glob("engine-*.jsonl"),
        ]
        assert {path.name: oct(mode(path)) for path in files} == {
            path.name: oct(0o600) for path in files
        }


def test_an_older_installs_loose_modes_are_tightened_at_start_up(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    with Installation(data) as installation:
        installation.migrate()
        database = data / "levipanel.sqlite3"
        for path in (database, data / ".secret_key"):
            path.chmod(0o644)
        (data / "levipanel.sqlite3-wal").write_bytes(b"")
        (data / "levipanel.sqlite3-wal").chmod(0o644)
        data.chmod(0o755)

        installation.manage("check")

        assert mode(data) == 0o700
        assert mode(database) == mode(data / ".secret_key") == 0o600
        assert mode(data / "levipanel.sqlite3-wal") == 0o600


def test_secrets_are_created_with_their_mode_never_chmod_ed_after(tmp_path):
    """With a umask of 022, a 0600 file that was never chmod-ed got its mode when opened."""
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-c", AUDITED],
        cwd=ROOT,
        env=environment(data),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    events = json.loads(done.stdout.strip().splitlines()[-1])
    secrets = (".secret_key", ".demo_password")
    chmods = [path for event, path, _ in events if event == "os.chmod"]
    assert not [path for path in chmods if any(name in path for name in secrets)], chmods
    for name in secrets:
        created = [
            flags
            for event, path, flags in events
            if event == "open" and name in Path(path).name and flags & os.O_CREAT
        ]
        assert created, f"{name} was never created"
        assert all(flags & os.O_EXCL for flags in created), f"{name} opened without O_EXCL"
        assert mode(data / name) == 0o600
