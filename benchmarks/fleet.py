"""Many runners on one PostgreSQL: write transactions, takeover after a kill -9, loop lag.

N engines (cycle ``CYCLE`` s) over R runner processes, one per ``PER_RUNNER`` engines
(2 to 10), on a PostgreSQL database created for the run and dropped after it. Each runner
is a benchmark worker (``worker.hold``) hosting one ``Runner`` with a lag probe in its loop;
the runners write their heartbeat rows before any claims, so each claims its share at once.
Once the runners have split the engines fairly and run them all, the steady window counts
write transactions at the database (PostgreSQL's transaction-id counter: only a transaction
that writes takes an id); then one runner is killed -9 and the takeover is timed until each
of its engines is held by a live runner and running again, started after the kill.

The transaction-id counter is the cluster's: anything else writing to the same PostgreSQL
server during the window is counted too. The runners' own counters, summed, are reported
beside it as a check.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import Row, percentile, row
from benchmarks.postgres import database, need, psycopg_module, server_url
from benchmarks.runner import WORKER, _worker
from engines_app.testing import Installation, environment

CYCLE = 10.0
PER_RUNNER = 1000
MAX_RUNNERS = 10
SETTLE_TIMEOUT = 300.0


def run(*, engines: int = 10_000, seconds: float = 10.0) -> list[Row]:
    """N engines over R runners on one PostgreSQL database, beside their baselines."""
    psycopg = psycopg_module()
    server = server_url()
    need(server)
    count = runners_for(engines)
    with tempfile.TemporaryDirectory(prefix="levipanel-fleet-") as tmp, database(server) as url:
        path = Path(tmp)
        _worker(path, "prepare", {"DATABASE_URL": url}, engines=engines)
        with psycopg.connect(url, autocommit=True) as db:
            with XidRate(db) as others:  # no runner yet: what the rest of the server writes
                bare = _bare_loops(path, count, math.ceil(engines / count), seconds)
            with Fleet(path, url, count, db) as fleet:
                settled = fleet.wait_settled(engines)
                steady = fleet.steady(seconds) | {"settled_s": settled}
                takeover, taken = fleet.kill_one()
    return rows(engines, count, steady | {"others_tx_per_s": others.rate}, bare, takeover, taken)


def rows(
    engines: int, count: int, steady: dict, bare: list[float], takeover: float, taken: int
) -> list[Row]:
    from engines_app.conf import engine_settings

    lease = engine_settings().lease
    per_cycle = engines / CYCLE
    fleet = f"{engines} engines over {count} runners"
    saves = f"one ORM save() per engine per cycle ({engines} / {CYCLE:g} s)"
    bare_name = f"bare asyncio loop, {math.ceil(engines / count)} sleeping tasks, {count} at once"
    lags = steady["lags"]
    return [
        row(
            f"write transactions/s, {fleet} (PostgreSQL xids)",
            steady["xid_tx_per_s"],
            "tx/s",
            per_cycle,
            saves,
            "<= 20",
        ),
        row(
            "write transactions/s (runners' own counters, summed)",
            steady["runner_tx_per_s"],
            "tx/s",
            per_cycle,
            saves,
            "<= 20",
        ),
        row(
            f"{fleet}: all running, fairly split, from the first claim",
            steady["settled_s"],
            "s",
            None,
            "",
            None,
        ),
        row(
            "write transactions/s of the rest of the server, before the runners (xids)",
            steady["others_tx_per_s"],
            "tx/s",
            None,
            "",
            None,
        ),
        row(
            f"takeover after kill -9 of one runner ({taken} engines)",
            takeover,
            "s",
            lease,
            "the lease (LEVIPANEL_LEASE)",
            f"< {lease + 5:g}",
        ),
        row(
            f"event-loop lag p99, worst of {count} runners",
            max(lags),
            "ms",
            max(bare),
            f"{bare_name}: worst",
            "< 50",
        ),
        row(
            f"event-loop lag p99, median of {count} runners",
            statistics.median(lags),
            "ms",
            statistics.median(bare),
            f"{bare_name}: median",
            "< 50",
        ),
    ]


class XidRate:
    """Write transactions per second at the server over a block, counted by PostgreSQL's
    transaction-id counter (cluster-wide) through the connection ``db``."""

    def __init__(self, db) -> None:
        self.db = db
        self.rate = math.nan

    def __enter__(self) -> XidRate:
        self.first, self.started = current_xid(self.db), time.time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        last, self.ended = current_xid(self.db), time.time()
        # Each call takes an id of its own: the second is the first + 1 on a quiet server.
        self.rate = (last - self.first - 1) / (self.ended - self.started)


def current_xid(db) -> int:
    """The next transaction id (this call's own: it is made to take one)."""
    return int(db.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0])


def runners_for(engines: int) -> int:
    """One runner per ``PER_RUNNER`` engines, at least 2 (a takeover needs a survivor)."""
    return min(MAX_RUNNERS, max(2, math.ceil(engines / PER_RUNNER)))


def _bare_loops(path: Path, count: int, tasks: int, seconds: float) -> list[float]:
    """Loop lag p99 (ms) of ``count`` bare loops of ``tasks`` sleeping tasks, run at once
    like the runners."""
    command = [
        sys.executable,
        "-m",
        WORKER,
        "bare",
        json.dumps({"engines": tasks, "seconds": seconds}),
    ]
    processes = [
        subprocess.Popen(command, env=environment(path), stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    found = []
    for process in processes:
        out, _ = process.communicate(timeout=seconds + 120)
        if process.returncode != 0:
            raise RuntimeError(f"bare loop worker exited with {process.returncode}")
        found.append(json.loads(out.strip().splitlines()[-1])["lag_p99_ms"])
    return found


class Fleet:
    """R runner workers on one database, read back through the connection ``db``."""

    def __init__(self, path: Path, url: str, count: int, db) -> None:
        from engines_app.models import Engine, RunnerHeartbeat

        self.path, self.db = path, db
        self.table = Engine._meta.db_table
        self.runners_table = RunnerHeartbeat._meta.db_table
        self.names = [f"bench-runner-{i}" for i in range(count)]
        self.installations = {
            name: Installation(
                path / name,
                {
                    "DATABASE_URL": url,
                    "LEVIPANEL_RUNNER_NAME": name,
                    "LEVIPANEL_CYCLE_INTERVAL": f"{CYCLE:g}",
                },
            )
            for name in self.names
        }
        self.processes: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> Fleet:
        go = self.path / "go"
        for name, installation in self.installations.items():
            installation.__enter__()
            options = json.dumps({"report": str(self.report(name)), "go": str(go)})
            self.processes[name] = installation.start("-m", WORKER, "hold", options, log_name=name)
        sql = f"SELECT count(*) FROM {self.runners_table} WHERE name = ANY(%s)"

        def announced() -> bool:
            return self.query(sql, self.names)[0][0] == len(self.names)

        # Each runner claims its share once all are known live: what is measured is a
        # fleet at work, not a cold start where the first runner claims every engine.
        self._until(announced, 120.0, "every runner's heartbeat row", every=0.2)
        go.touch()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()  # release the leases, like a deploy's SIGTERM
        for installation in self.installations.values():
            installation.stop(grace=60)

    def report(self, name: str) -> Path:
        return self.path / f"{name}.json"

    def query(self, sql: str, *params: object) -> list[tuple]:
        return self.db.execute(sql.replace("ENGINE", self.table), params).fetchall()

    def wait_settled(self, engines: int) -> float:
        """Until every engine runs on a live lease and each runner holds its fair share;
        the seconds since the runners were let claim."""
        share = math.ceil(engines / len(self.names))

        def settled() -> bool:
            held = dict(
                self.query(
                    "SELECT lease_owner, count(*) FROM ENGINE WHERE status = 'running' "
                    "AND lease_expires_at > now() GROUP BY lease_owner"
                )
            )
            return sum(held.values()) == engines and all(
                0 < held.get(name, 0) <= share for name in self.names
            )

        # Every half second: a count of every row costs the runners' database too.
        what = f"{engines} engines fairly split and running"
        self._until(settled, SETTLE_TIMEOUT, what, every=0.5)
        return time.monotonic() - self.started

    def steady(self, seconds: float) -> dict:
        """Write transactions over ``seconds`` at the database and in the runners' own
        counters, and each runner's loop lag p99 (ms) over the same window."""
        time.sleep(2.0)  # the last start-up statuses and hand-overs are written
        with XidRate(self.db) as xids:
            time.sleep(seconds)
        started, ended = xids.started, xids.ended
        timelines = self._timelines(ended)
        writes = sum(
            _count_at(t["writes"], ended) - _count_at(t["writes"], started) for t in timelines
        )
        lags = [
            percentile([lag for at, lag in t["lags"] if started <= at <= ended], 99) * 1000
            for t in timelines
        ]
        return {
            "xid_tx_per_s": xids.rate,
            "runner_tx_per_s": writes / (ended - started),
            "lags": lags,
        }

    def _timelines(self, since: float) -> list[dict]:
        """Ask each runner for its timeline (SIGUSR1) and read the ones written after ``since``."""
        for process in self.processes.values():
            os.kill(process.pid, signal.SIGUSR1)

        def read(name: str) -> dict | None:
            path = self.report(name)
            if not path.exists():
                return None
            data = json.loads(path.read_text())
            return data if data["at"] >= since else None

        self._until(lambda: all(read(name) for name in self.names), 30.0, "the runners' reports")
        return [read(name) for name in self.names]

    def kill_one(self) -> tuple[float, int]:
        """kill -9 the last runner; seconds until each engine it held is held by a live
        runner and running again (started after the kill), and how many it held."""
        victim = self.names[-1]
        ids = [pk for (pk,) in self.query("SELECT id FROM ENGINE WHERE lease_owner = %s", victim)]
        killed = time.time()
        os.kill(self.processes[victim].pid, signal.SIGKILL)

        def taken_over() -> bool:
            (left,) = self.query(
                "SELECT count(*) FROM ENGINE WHERE id = ANY(%s) AND NOT (lease_owner <> '' "
                "AND lease_owner <> %s AND lease_expires_at > now() AND status = 'running' "
                "AND started_at >= to_timestamp(%s))",
                ids,
                victim,
                killed,
            )[0]
            return left == 0

        from engines_app.conf import engine_settings

        self._until(taken_over, engine_settings().lease + 120, f"the takeover from {victim}")
        return time.time() - killed, len(ids)

    def _until(
        self, predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.1
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            for name, process in self.processes.items():
                if process.poll() is not None and process.returncode != -signal.SIGKILL:
                    tail = process.log_path.read_text()[-2000:]
                    raise RuntimeError(f"runner {name} exited with {process.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not reached in {timeout:.0f}s: {what}")
            time.sleep(every)


def _count_at(samples: list[list[float]], at: float) -> float:
    """The runner's write count at wall time ``at``: its last sample up to then."""
    before = [count for stamp, count in samples if stamp <= at]
    return before[-1] if before else 0
