"""Several `runengines` processes on one PostgreSQL database share 40 trading engines through
leases: a fair split, and each fault (SIGSTOP, kill -9, a cut connection, SIGTERM) ends with
every engine running in exactly one place and a ledger that adds up. On SQLite a second
runner is refused."""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from engines_app.testing import Installation
from tests.helpers import (
    FAST_RUNNER,
    SHOWN_HEARTBEATS,
    TRADES_OFTEN,
    TcpProxy,
    check_ledger,
    eventually_sync,
    ledger_problems,
    query,
)

LEASE = 3.0
FAST = {**FAST_RUNNER, "LEVIPANEL_LEASE": f"{LEASE:g}"}
SYMBOLS = [f"T{n:02d}USDT" for n in range(40)]
ADD = (
    "from engines_app import services\n"
    "for symbol in {symbols!r}:\n"
    "    services.engine_add(symbol=symbol, config={config!r})\n"
)
READY = "LeviPanel engine runner ready"
# What a runner says when it stops an engine whose lease it lost, or fences itself.
LOST = re.compile(r"Engine \w+ stopped here: its lease")
SELF_FENCED = re.compile(r"Engine \w+ stopped here: .*self-fenced")


class Fleet:
    """Runners on one PostgreSQL database, each a `runengines` process with its own name
    and data dir (its own logs), read back through a connection of the test's."""

    def __init__(self, tmp_path: Path, url: str, stack: contextlib.ExitStack) -> None:
        self.tmp_path, self.url, self.stack = tmp_path, url, stack
        self.db = stack.enter_context(psycopg.connect(url, autocommit=True))
        self.runners: dict[str, subprocess.Popen] = {}
        self.trade_counts: dict[str, int] = {}
        self.went_back: list[str] = []  # a stale write of a runner that lost the engine

    def start(self, name: str, *, url: str | None = None) -> subprocess.Popen:
        env = {**FAST, "DATABASE_URL": url or self.url, "LEVIPANEL_RUNNER_NAME": name}
        installation = self.stack.enter_context(Installation(self.tmp_path / name, env))
        self.runners[name] = installation.start("manage.py", "runengines", log_name="runner")
        return self.runners[name]

    def log(self, name: str) -> str:
        return self.runners[name].log_path.read_text()

    def rows(self) -> dict[str, tuple[str, int, str]]:
        """symbol -> (lease owner, lease epoch, status); notes a trade count that went back."""
        found = self.db.execute(
            "SELECT symbol, lease_owner, lease_epoch, status, trade_count FROM engines_app_engine"
        ).fetchall()
        for symbol, _, _, _, count in found:
            if count < self.trade_counts.get(symbol, 0):
                self.went_back.append(
                    f"{symbol}: trade_count {self.trade_counts[symbol]} -> {count}"
                )
            self.trade_counts[symbol] = count
        return {symbol: (owner, epoch, status) for symbol, owner, epoch, status, _ in found}

    def held(self) -> Counter[str]:
        return Counter(owner for owner, _, _ in self.rows().values())

    def fair(self, *names: str) -> bool:
        """Every engine running, held by one of ``names``, none above its fair share."""
        rows = self.rows()
        held = Counter(owner for owner, _, _ in rows.values())
        share = math.ceil(len(rows) / len(names))
        return (
            set(held) == set(names)
            and all(held[name] <= share for name in names)
            and all(status == "running" for _, _, status in rows.values())
        )

    def taken_over(self, leases: dict[str, int], by: set[str]) -> bool:
        """Every engine of ``leases`` (symbol -> epoch) running under a newer lease of a
        runner in ``by``."""
        rows = self.rows()
        return all(
            rows[symbol][0] in by and rows[symbol][1] > epoch and rows[symbol][2] == "running"
            for symbol, epoch in leases.items()
        )

    def leases_of(self, name: str) -> dict[str, int]:
        return {symbol: epoch for symbol, (owner, epoch, _) in self.rows().items() if owner == name}

    def fills(self, name: str) -> list[tuple[str, int]]:
        """(symbol, epoch) of every fill stored under ``name``."""
        return self.db.execute(
            "SELECT symbol, epoch FROM engines_app_trade WHERE runner = %s", (name,)
        ).fetchall()

    def trade_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM engines_app_trade").fetchone()[0]

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """``eventually_sync`` that shows where the engines are when it gives up."""
        try:
            return eventually_sync(predicate, timeout=timeout, interval=0.05)
        except AssertionError:
            states = Counter((owner, status) for owner, _, status in self.rows().values())
            alive = {name: p.poll() is None for name, p in self.runners.items()}
            # A runner paused or cut off inside a transaction keeps its row locks.
            open_transactions = self.db.execute(
                "SELECT state, left(query, 80), now() - xact_start FROM pg_stat_activity "
                "WHERE datname = current_database() AND xact_start IS NOT NULL "
                "AND pid <> pg_backend_pid()"
            ).fetchall()
            raise AssertionError(
                f"{what} within {timeout:g}s: {dict(states)}; alive {alive}; "
                f"open transactions {open_transactions}"
            ) from None

    def settle(self, *names: str, timeout: float = 4 * LEASE + 10) -> None:
        self.wait(lambda: self.fair(*names), timeout, f"no fair split over {names}")

    def finish(self) -> list[str]:
        """Stop every runner (SIGTERM, then SIGKILL); the ledger's broken invariants, and
        every trade count seen going back."""
        for process in self.runners.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
        for process in self.runners.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(15)
            if process.poll() is None:
                process.kill()
                process.wait(10)
        self.rows()
        return ledger_problems(self.db) + self.went_back


@pytest.fixture
def fleet(tmp_path: Path, postgres_database: str) -> Iterator[Fleet]:
    """40 engines that trade every few cycles on a fresh PostgreSQL database; the runners
    started on it are killed at the end whatever happened."""
    with Installation(tmp_path / "setup", {**FAST, "DATABASE_URL": postgres_database}) as setup:
        setup.manage("shell", "-c", ADD.format(symbols=SYMBOLS, config=TRADES_OFTEN))
    with contextlib.ExitStack() as stack:
        yield Fleet(tmp_path, postgres_database, stack)


def no_changes(fleet: Fleet, settled: dict[str, tuple[str, int, str]], trades: int) -> bool:
    """Until 200 more fills: fail if any lease moves (a settled split does not flap)."""
    leases = {symbol: row[:2] for symbol, row in fleet.rows().items()}
    assert leases == {symbol: row[:2] for symbol, row in settled.items()}, "a lease moved"
    return fleet.trade_count() >= trades + 200


@pytest.mark.postgres
@pytest.mark.parametrize(
    "names, split",
    [(("alpha", "beta"), [[20, 20]]), (("alpha", "beta", "gamma"), [[14, 13, 13], [14, 14, 12]])],
)
def test_runners_share_forty_engines_fairly(fleet: Fleet, names, split):
    for name in names:
        fleet.start(name)
    fleet.wait(lambda: all(READY in fleet.log(name) for name in names), 60, "not all ready")
    # Within about a lease of the last one's start (twice that on a busy machine).
    fleet.settle(*names, timeout=2 * LEASE)
    assert sorted(fleet.held().values(), reverse=True) in split

    settled, trades = fleet.rows(), fleet.trade_count()
    fleet.wait(lambda: no_changes(fleet, settled, trades), 30, "no trading after the split")
    assert fleet.fills("") == []  # every fill names its runner
    assert fleet.finish() == []


def fills_under(fleet: Fleet, name: str, leases: dict[str, int]) -> list[tuple[str, int]]:
    """``name``'s fills under ``leases`` (symbol -> epoch) or older epochs of those engines
    (not of engines it handed over before: they are not among ``leases``)."""
    return sorted(f for f in fleet.fills(name) if f[0] in leases and f[1] <= leases[f[0]])


@pytest.mark.postgres
def test_a_paused_runner_is_taken_over_and_writes_nothing_after(fleet: Fleet):
    alpha, _ = fleet.start("alpha"), fleet.start("beta")
    fleet.settle("alpha", "beta")
    fleet.wait(lambda: fleet.fills("alpha"), 10, "alpha made no fill")
    lost = fleet.leases_of("alpha")

    os.kill(alpha.pid, signal.SIGSTOP)
    fleet.wait(lambda: fleet.taken_over(lost, {"beta"}), LEASE + 10, "beta did not take over")
    stale_fills = fills_under(fleet, "alpha", lost)

    os.kill(alpha.pid, signal.SIGCONT)
    flapped = []

    def alpha_stopped_them() -> bool:
        rows = fleet.rows()
        flapped.extend(s for s, epoch in lost.items() if rows[s][:2] == ("alpha", epoch))
        return LOST.search(fleet.log("alpha"))

    fleet.wait(alpha_stopped_them, 10, "alpha did not say it stopped the engines it lost")
    # Back among the live: it writes again (its heartbeat), and so would have written the
    # fills it made before the pause by now.
    fleet.settle("alpha", "beta")
    assert flapped == []
    assert fills_under(fleet, "alpha", lost) == stale_fills
    assert alpha.poll() is None
    assert fleet.finish() == []


def pause_inside_a_transaction(fleet: Fleet, process: subprocess.Popen) -> list[tuple]:
    """SIGSTOP ``process`` at a moment its database session is inside a transaction that
    has run a query (and so may hold row locks); that session's row."""
    ports = {c.laddr.port for c in psutil.Process(process.pid).net_connections("tcp")}
    for _ in range(500):
        os.kill(process.pid, signal.SIGSTOP)
        found = fleet.db.execute(
            "SELECT state, left(query, 80) FROM pg_stat_activity "
            "WHERE datname = current_database() AND xact_start IS NOT NULL "
            "AND query NOT LIKE 'BEGIN%%' AND client_port = ANY(%s)",
            (list(ports),),
        ).fetchall()
        if found:
            return found
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.01)  # pacing: the next try lands elsewhere in its write cycle
    raise AssertionError("never caught the runner inside a transaction")


@pytest.mark.postgres
def test_a_runner_paused_inside_its_write_transaction_is_taken_over(fleet: Fleet):
    alpha, _ = fleet.start("alpha"), fleet.start("beta")
    fleet.settle("alpha", "beta")
    lost = fleet.leases_of("alpha")
    pause_inside_a_transaction(fleet, alpha)
    # Its leases expire while it is paused, whatever it was doing: row locks it took in
    # an open transaction must not keep its engines from a live runner.
    fleet.wait(lambda: fleet.taken_over(lost, {"beta"}), LEASE + 10, "beta did not take over")
    assert fleet.finish() == []


@pytest.mark.postgres
def test_a_killed_runner_is_taken_over_within_lease_plus_5s(fleet: Fleet):
    alpha, _ = fleet.start("alpha"), fleet.start("beta")
    fleet.settle("alpha", "beta")
    lost = fleet.leases_of("alpha")

    killed_at = time.monotonic()
    alpha.kill()
    fleet.wait(lambda: fleet.taken_over(lost, {"beta"}), LEASE + 10, "beta did not take over")
    took = time.monotonic() - killed_at
    assert took < LEASE + 5, f"takeover took {took:.1f}s"
    assert fleet.held() == {"beta": len(SYMBOLS)}
    assert fleet.finish() == []


@pytest.mark.postgres
def test_a_runner_cut_off_from_the_database_fences_itself_and_recovers(fleet: Fleet):
    with TcpProxy("127.0.0.1", 5432) as proxy:
        through_proxy = re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", fleet.url)
        alpha = fleet.start("alpha", url=through_proxy)
        fleet.start("beta")
        fleet.settle("alpha", "beta")
        lost = fleet.leases_of("alpha")

        proxy.cut()
        fleet.wait(lambda: SELF_FENCED.search(fleet.log("alpha")), LEASE + 5, "alpha did not fence")
        fleet.wait(lambda: fleet.taken_over(lost, {"beta"}), LEASE + 10, "no takeover")
        assert alpha.poll() is None

        proxy.restore()
        fleet.settle("alpha", "beta", timeout=60)
        assert fleet.finish() == []


@pytest.mark.postgres
def test_sigterm_hands_engines_over_within_a_poll(fleet: Fleet):
    alpha, _ = fleet.start("alpha"), fleet.start("beta")
    fleet.settle("alpha", "beta")
    handed = fleet.leases_of("alpha")

    asked_at = time.monotonic()
    alpha.terminate()
    fleet.wait(lambda: fleet.taken_over(handed, {"beta"}), LEASE, "no hand-over")
    took = time.monotonic() - asked_at
    assert took < LEASE / 2, f"hand-over took {took:.1f}s: the lease ran out, nobody released"
    assert alpha.wait(15) == 0
    stopped_at, held = fleet.db.execute(
        "SELECT stopped_at, held FROM engines_app_runnerheartbeat WHERE name = 'alpha'"
    ).fetchone()
    assert stopped_at is not None and held == 0
    assert fleet.finish() == []


def heartbeats(project: Installation) -> dict[str, str]:
    return dict(query(project, SHOWN_HEARTBEATS))


def all_running(project: Installation) -> bool:
    statuses = query(project, "SELECT status FROM engines_app_engine")
    return len(statuses) == 3 and {status for (status,) in statuses} == {"running"}


def test_sqlite_refuses_a_second_runner_and_not_the_next_after_a_kill(project: Installation):
    project.env.update(FAST, LEVIPANEL_RUNNER_NAME="first")
    first = project.start("manage.py", "runengines", log_name="first")
    eventually_sync(lambda: all_running(project), timeout=30, message="engines never ran")

    project.env["LEVIPANEL_RUNNER_NAME"] = "second"
    began = time.monotonic()
    second = project.manage("runengines", check=False, timeout=30)
    assert second.returncode != 0
    assert time.monotonic() - began < 15  # at once: no waiting for the holder
    said = second.stdout + second.stderr
    assert "first" in said and str(first.pid) in said, said
    assert re.search(r"\d\d:\d\d", said), f"no 'since when' in: {said}"
    assert "PostgreSQL" in said

    # The first runner is untouched: alive, heart-beating.
    before = heartbeats(project)
    eventually_sync(lambda: heartbeats(project) != before, timeout=5, message="first went quiet")
    assert first.poll() is None and all_running(project)

    first.kill()
    first.wait(10)
    before = heartbeats(project)
    project.env["LEVIPANEL_RUNNER_NAME"] = "third"
    third = project.start("manage.py", "runengines", log_name="third")
    eventually_sync(
        lambda: (
            all(now != before[s] for s, now in heartbeats(project).items()) and all_running(project)
        ),
        timeout=30,
        message="a runner after the killed one did not run the engines",
    )
    third.terminate()
    assert third.wait(15) == 0
    with contextlib.closing(sqlite3.connect(project.data_dir / "levipanel.sqlite3")) as db:
        assert ledger_problems(db) == []


def test_the_ledger_check_finds_each_broken_invariant():
    # (engine_id, seq, fill_id, side, qty, position_after, runner, epoch)
    good = [
        (1, 1, "f1", "buy", 1.0, 1.0, "alpha", 1),
        (1, 2, "f2", "sell", 2.0, -1.0, "alpha", 1),
        (1, 3, "f3", "buy", 1.0, 0.0, "beta", 2),
    ]
    engine = (1, "T00USDT", None, 3, 2)  # (id, symbol, position, trade_count, lease_epoch)
    assert check_ledger([engine], good) == []
    broken = {
        "position": ([(1, "T00USDT", 1.0, 3, 2)], good),
        "trade_count": ([(1, "T00USDT", None, 2, 2)], good),
        "seq": ([engine], [good[0], good[1], (*good[2][:1], 4, *good[2][2:])]),
        "fill id": ([engine], [good[0], good[1], (*good[2][:2], "f1", *good[2][3:])]),
        "also by": ([engine], [*good[:2], (*good[2][:6], "beta", 1)]),
        "after": ([engine], [good[0], (*good[1][:6], "beta", 2), (*good[2][:6], "alpha", 1)]),
        "> lease": ([(1, "T00USDT", None, 3, 1)], good),
    }
    for word, (engines, trades) in broken.items():
        problems = check_ledger(engines, trades)
        assert any(word in problem for problem in problems), (word, problems)


def test_the_proxy_forwards_and_is_cut_and_restored():
    with socket.create_server(("127.0.0.1", 0)) as server, TcpProxy(*server.getsockname()) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        accepted, _ = server.accept()
        client.sendall(b"ping")
        assert accepted.recv(4) == b"ping"

        proxy.cut()
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(4) == b""  # closed (or reset) under the client
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5)

        proxy.restore()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as again:
            accepted2, _ = server.accept()
            accepted2.sendall(b"pong")
            assert again.recv(4) == b"pong"
        for sock in (client, accepted, accepted2):
            sock.close()
