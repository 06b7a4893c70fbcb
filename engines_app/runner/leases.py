"""Which engines this runner holds, and for how long it may trust that it does.

Every engine row carries a lease: owner runner, epoch (bumped on every claim) and expiry
(database time). A runner claims free or expired engines up to its fair share, renews what it
holds with each heartbeat flush, and fences every write by owner and epoch (see
``store.write``). It also fences itself: when it could not renew for most of a lease (paused,
cut off from the database) it stops its engines before the lease can expire elsewhere,
judged by its own monotonic clock.

On SQLite one runner serves a database: ``hold_database`` takes an OS lock beside the file,
which a killed runner loses with its process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class RunnerRefused(Exception):
    """This runner must not start: another one holds the database or the name."""


@dataclass(frozen=True)
class Identity:
    """Who a runner is: its name (on leases, fills and its heartbeat), host and pid."""

    name: str
    host: str
    pid: int

    @classmethod
    def of_this_process(cls, name: str = "") -> Identity:
        """``name``, or host:pid so that two runners on one host are told apart."""
        host, pid = socket.gethostname(), os.getpid()
        return cls(name or f"{host}:{pid}", host, pid)


class Leases:
    """The engines this runner holds (engine id -> epoch) and when it last renewed them."""

    def __init__(
        self,
        identity: Identity,
        *,
        lease: float,
        margin: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self.lease = lease
        self.margin = margin  # stop this long before the lease can expire elsewhere
        self.monotonic = monotonic
        self.epochs: dict[int, int] = {}
        self.renewed_at = -math.inf  # monotonic start of the last renewal that committed

    @property
    def runner(self) -> str:
        return self.identity.name

    def __len__(self) -> int:
        return len(self.epochs)

    def holds(self, engine_id: int, owner: str, epoch: int) -> bool:
        """Whether a row's lease is this runner's, at the epoch it claimed."""
        return owner == self.runner and self.epochs.get(engine_id) == epoch

    def claimed(self, engine_id: int, epoch: int, at: float) -> None:
        """A claim that began at monotonic ``at`` committed. Held leases keep the older
        renewal time: the earliest expiry is the one to fence by."""
        if not self.epochs:
            self.renewed_at = at
        self.epochs[engine_id] = epoch

    def renewed(self, at: float) -> None:
        """A renewal that began at monotonic ``at`` committed."""
        self.renewed_at = at

    def renewal_due(self) -> bool:
        """Renew every quarter lease, not at every flush: a renewal rewrites every row the
        runner holds, and a lease still outlives two missed renewals by far."""
        return self.monotonic() >= self.renewed_at + self.lease / 4

    def drop(self, engine_id: int) -> None:
        self.epochs.pop(engine_id, None)

    def must_fence(self) -> bool:
        """True when the leases may expire within ``margin``: stop every engine now."""
        return bool(self.epochs) and self.monotonic() >= self.renewed_at + self.lease - self.margin


def postgres_session_options(lease: float, options: dict[str, Any]) -> dict[str, Any]:
    """Connection options that keep a runner's row locks from outliving its lease: the
    server ends a session idle inside a transaction (a runner paused mid-write), and TCP
    keepalives find a connection cut without a reset, each well within the lease."""
    bound = max(1, int(lease / 3))
    settings = [
        f"-c idle_in_transaction_session_timeout={bound * 1000}",
        f"-c tcp_keepalives_idle={bound}",
        "-c tcp_keepalives_interval=1",
        "-c tcp_keepalives_count=2",
    ]
    keepalives = {"keepalives": 1, "keepalives_idle": bound, "keepalives_interval": 1}
    joined = " ".join(filter(None, [options.get("options", ""), *settings]))
    return {**options, **keepalives, "keepalives_count": 2, "options": joined}


def fair_share(engines: int, live_runners: int) -> int:
    """The engines one of ``live_runners`` should hold: ceil(engines / runners)."""
    return math.ceil(engines / max(1, live_runners))


def fence_margin(lease: float, poll_interval: float) -> float:
    """How long before its leases can expire a runner that cannot renew stops its engines."""
    return max(lease / 5, 2 * poll_interval)


@contextlib.contextmanager
def hold_database(database: str, identity: Identity) -> Iterator[None]:
    """Hold the SQLite database ``database`` for this runner; ``RunnerRefused`` naming the
    runner that holds it. The lock is the OS's: a runner killed -9 loses it at once."""
    if not database or database == ":memory:" or database.startswith("file:"):
        yield  # an in-memory database is this process's alone
        return
    path = Path(f"{database}.runner.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunnerRefused(_held_message(database, os.pread(fd, 4096, 0))) from None
        since = datetime.now(UTC).isoformat(timespec="seconds")
        holder = {"name": identity.name, "host": identity.host, "pid": identity.pid}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder | {"since": since}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the file releases the lock


def _held_message(database: str, raw: bytes) -> str:
    try:
        holder = json.loads(raw.decode() or "{}")
    except ValueError:
        holder = {}
    who = (
        f"runner {holder.get('name', '?')} (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}) since {holder.get('since', '?')}"
    )
    return (
        f"Another runner holds the SQLite database {database}: {who}. "
        "On SQLite one runner serves a database; stop that one first, or to run several "
        "runners use PostgreSQL (DATABASE_URL), where they share the engines."
    )
