"""Flooding websocket clients against a real daphne: other users' API calls keep their
latency and the web process its memory. Real processes: daphne, a flooding process, and
this test as the other user."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from engines_app.testing import ROOT, Installation

ENGINES = 1000
FLOODERS = 4
FLOOD_SECONDS = 4.0
# A host that steals CPU now and then can double any 4 s window's p95 on its own: the
# flood gets up to three rounds to show it leaves the other user fast, each judged against
# the quiet figures on either side of it. A server that lets a flood slow the others down
# does it in every round.
ROUNDS = 3
PROBES = 60
RSS_SLACK_KB = 8 * 1024
# Run by path: the helpers package imports Django, which the flooding process does not need.
FLOOD_SCRIPT = ROOT / "tests" / "helpers" / "flood.py"

MAKE_ENGINES = (
    "from engines_app.models import Engine; "
    f"Engine.objects.bulk_create(Engine(symbol=f'E{{i:04d}}USDT') for i in range({ENGINES}))"
)


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def p95_ms(
    client: httpx.Client, path: str, samples: int = PROBES, while_running: Any = None
) -> float:
    """The 95th percentile of sequential GETs of ``path`` in milliseconds: ``samples`` of
    them, and more while the process ``while_running`` runs."""
    times: list[float] = []
    while len(times) < samples or (while_running and while_running.poll() is None):
        started = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)[int(0.95 * (len(times) - 1))]


def flood(panel: Installation, session: str, *, seconds: float) -> subprocess.Popen:
    """Start FLOODERS clients flooding the dashboard's websocket for ``seconds``."""
    ws_url = f"ws://127.0.0.1:{panel.port}/ws/engines/"
    command = [sys.executable, str(FLOOD_SCRIPT), ws_url, panel.url, session]
    return subprocess.Popen(
        [*command, str(FLOODERS), str(seconds)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def test_flooding_websockets_keep_other_users_fast_and_the_server_small(tmp_path):
    with Installation(tmp_path / "data") as panel:
        panel.migrate()
        panel.demo_login()
        panel.manage("shell", "-c", MAKE_ENGINES)
        token = panel.manage("apitoken", "create", "admin", "probe").stdout.strip()
        web = panel.serve()
        session = panel.login()
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=panel.url, headers=headers, timeout=10) as api:
            with panel.dashboard(session):  # warm up: one snapshot of every engine
                pass
            p95_ms(api, "/engines/status/E0001USDT", samples=10)
            quiet_before = p95_ms(api, "/engines/status/E0001USDT")
            # A first second of flood warms up the allocator and spends the user's burst of
            # connections: what follows is a flood that keeps going.
            flood(panel, session, seconds=1.0).communicate(timeout=60)
            rss_before = vm_rss_kb(web.pid)
            rounds: list[tuple[float, float, dict]] = []  # (quiet, loaded, flood totals)
            while len(rounds) < ROUNDS and not any(fair(*r) for r in rounds):
                flooders = flood(panel, session, seconds=FLOOD_SECONDS)
                try:
                    loaded = p95_ms(api, "/engines/status/E0001USDT", while_running=flooders)
                    totals = json.loads(flooders.communicate(timeout=60)[0])
                finally:
                    flooders.kill()
                # Quiet again: on a shared machine the quiet figure is the worse of both sides
                # of this round.
                quiet_after = p95_ms(api, "/engines/status/E0001USDT")
                rounds.append((max(quiet_before, quiet_after), loaded, totals))
                quiet_before = quiet_after
            rss_after = vm_rss_kb(web.pid)
    for _, _, totals in rounds:
        assert totals["closed"] >= FLOODERS, totals  # the server dropped the flooders
    assert any(fair(*r) for r in rounds), rounds
    assert rss_after - rss_before <= RSS_SLACK_KB, (rss_before, rss_after, rounds)


def fair(quiet: float, loaded: float, totals: dict) -> bool:
    """Whether the other user's p95 under the flood stayed within twice the quiet one."""
    return loaded <= 2 * quiet
