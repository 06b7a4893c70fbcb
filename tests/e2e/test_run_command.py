"""The README's run command: web server, runner and task cluster in the foreground, the URL
and a demo login printed, all three stopped by one Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import psutil

from engines_app.testing import ROOT, environment, free_port
from tests.helpers import eventually_sync


def test_serve_runs_web_runner_and_tasks_and_ctrl_c_stops_all_three(tmp_path):
    port = free_port()
    data_dir = tmp_path / "data"
    env = environment(
        data_dir,
        {
            "LEVIPANEL_PORT": str(port),
            "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}",
        },
    )
    out_path = tmp_path / "serve.log"
    with out_path.open("w") as out:
        serve = subprocess.Popen(
            [sys.executable, "dev.py", "serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    groups: list[int] = []
    try:
        output = lambda: out_path.read_text()  # noqa: E731
        eventually_sync(
            lambda: "LeviPanel engine runner ready" in output(),
            timeout=30,
            message="the runner did not start",
        )
        eventually_sync(
            lambda: "running." in output(), timeout=30, message="qcluster did not start"
        )
        text = output()
        assert f"LeviPanel: http://127.0.0.1:{port}/" in text
        assert re.search(r"Demo login: username admin  password \S+", text)
        groups = [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", text)]
        assert len(groups) == 3
        login = eventually_sync(lambda: _get(f"http://127.0.0.1:{port}/login/"), timeout=15)
        assert login.status_code == 200

        # A runner that dies is started again; the web server and the tasks stay up.
        (runner,) = [
            p
            for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [])[-2:] == ["manage.py", "runengines"]
            and os.getpgid(p.pid) in groups
        ]
        runner.kill()
        eventually_sync(
            lambda: "runner exited with status 137" in output(),
            timeout=10,
            message="the runner's death went unnoticed",
        )
        eventually_sync(
            lambda: output().count("LeviPanel engine runner ready") == 2,
            timeout=30,
            message="the runner was not started again",
        )
        assert _get(f"http://127.0.0.1:{port}/login/").status_code == 200

        serve.send_signal(signal.SIGINT)  # what Ctrl-C does to the foreground process
        assert serve.wait(20) == 0
        assert "SIGINT received" in output()
        # SIGKILLed stragglers are reaped by init a moment later.
        eventually_sync(
            lambda: not _left(groups), timeout=5, message=f"left running: {_left(groups)}"
        )
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def _left(groups: list[int]) -> list[str]:
    """Live processes of the three process groups honcho started."""
    left = []
    for process in psutil.process_iter(["pid", "status", "cmdline"]):
        try:
            if os.getpgid(process.pid) in groups and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {' '.join(process.info['cmdline'] or [])}")
        except (ProcessLookupError, psutil.Error):
            pass
    return left


def test_serve_with_a_bad_setting_says_why_without_a_traceback(tmp_path):
    env = {
        **os.environ,
        "LEVIPANEL_DATA_DIR": str(tmp_path / "data"),
        "LEVIPANEL_CYCLE_INTERVAL": "soon",
    }
    done = subprocess.run(
        [sys.executable, "dev.py", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "LEVIPANEL_CYCLE_INTERVAL: Not a valid number." in output
    assert "manage.py migrate failed" in output
    assert "Traceback" not in output
