"""``GET /engines/status``, built once per data version and served from this process.

The rows change about once a flush interval, and a fleet's answer is hundreds of KB of JSON:
building it for every client costs more than sending it. A snapshot is the whole fleet's
status, already encoded, with a strong ETag (a hash of its bytes). It is served again while
all of these hold:

- the data version is the one it was built at: ``data_version()``, one aggregate query over
  the engine rows (count, highest id, and the sums of ``updated_at`` and
  ``lease_expires_at``: every write that changes what a status shows stamps ``updated_at``,
  a lease renewal moves ``lease_expires_at``), plus every runner's last heartbeat and
  the beat it carries for its engines in step (on SQLite, asked again only after another
  connection committed: see ``data_version``);
- no lease it showed live has expired since (the engine would now show ``unknown``);
- it is younger than ``MAX_AGE``: ages (``uptime_seconds``, ``heartbeat_age_seconds``) are
  as of when it was built.

Not the newest row stamp: a writer stamps ``updated_at`` before it commits, so a row can
become visible with a stamp older than the newest one already seen. A sum moves whenever
any row's stamp moves (on SQLite, to the millisecond: a second write of one row within the
same millisecond, read between the two, is seen when the snapshot's ``MAX_AGE`` runs out).
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import ujson
from django.db import connection

from ..models import Engine, RunnerHeartbeat
from .engines import BROKER_FIELDS, STATUS_FIELDS, STATUSES, runners_seen, status_counts, status_row

MAX_AGE = 1.0  # seconds a snapshot's ages may lag behind

# Each stamp as whole milliseconds (SQLite keeps dates to the millisecond), summed exactly.
_VERSION_SQL = {
    "sqlite": (
        "SELECT COUNT(*), MAX(id),"
        " SUM(CAST(ROUND(julianday(updated_at) * 86400000) AS INTEGER)),"
        " SUM(CAST(ROUND(julianday(lease_expires_at) * 86400000) AS INTEGER))"
        " FROM {table}"
    ),
    "postgresql": (
        "SELECT COUNT(*), MAX(id),"
        " SUM((EXTRACT(EPOCH FROM updated_at) * 1000000)::bigint),"
        " SUM((EXTRACT(EPOCH FROM lease_expires_at) * 1000000)::bigint)"
        " FROM {table}"
    ),
}


def data_version(*, reads_only: bool = False) -> tuple | None:
    """What the fleet's status is made of, as a value that changes with every write to it;
    None on a database this does not know how to ask (nothing is cached then).

    ``reads_only``: this thread's connection never writes (the API's fleet reads'
    thread).
    On SQLite the version is then asked again only after another connection committed:
    ``PRAGMA data_version`` tells, without reading a row, while the aggregate reads all
    of them (0.5 ms at 1,000 engines). Not for a connection that writes: its own
    commits leave the pragma as it was."""
    if connection.vendor not in _VERSION_SQL:
        return None
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        mark = None
        if reads_only and connection.vendor == "sqlite" and not connection.allow_thread_sharing:
            cursor.execute("PRAGMA data_version")
            mark = (connection.connection, cursor.fetchone()[0])
            known = getattr(_asked, "version", None)
            if known is not None and known[0] == mark:  # the same connection, nothing new
                return known[1]
        engines = _engines_version(cursor)
        # Every runner's last heartbeat (shown as ``runner_last_seen``) and the beat of its
        # engines in step (``Engine.beats_with_runner``). A handful of rows.
        table = quote(RunnerHeartbeat._meta.db_table)
        cursor.execute(f"SELECT name, last_seen, beats_since FROM {table}")
        runners = sorted(cursor.fetchall())
    version = engines, tuple(runners)
    if mark is not None:
        _asked.version = mark, version
    return version


# On each thread: (its SQLite connection and data_version pragma, the version read then).
_asked = threading.local()


def _engines_version(cursor) -> tuple:
    """The engine rows' part of the version: the aggregate over every row."""
    sql = _VERSION_SQL[connection.vendor]
    cursor.execute(sql.format(table=connection.ops.quote_name(Engine._meta.db_table)))
    return tuple(cursor.fetchone())


@dataclass(frozen=True)
class Snapshot:
    """Every engine's status (in symbol order), the fleet's counts, and the whole answer
    encoded, as of ``built``."""

    version: tuple | None
    built: float
    valid_until: float
    rows: list[dict[str, Any]]  # the engine rows as read (``STATUS_FIELDS``)
    engines: list[dict[str, Any]]
    counts: dict[str, int]
    by_status: dict[str, list[dict[str, Any]]]
    body: bytes
    etag: str

    def current(self, version: tuple | None, now: float) -> bool:
        return version is not None and version == self.version and now < self.valid_until

    @cached_property
    def gzipped(self) -> bytes:
        """``body`` gzipped, made the first time a client asks for it: a thirteenth of the
        size or less, in about 1.3 ms at 1,000 engines (level 3: level 6 takes twice as
        long for a tenth less)."""
        return gzip.compress(self.body, compresslevel=3, mtime=0)


def encode(document: dict[str, Any]) -> tuple[bytes, str]:
    """The JSON bytes of ``document`` and their strong ETag. ujson: a fleet's list in a
    quarter of the time the standard library takes, and without its spaces."""
    body = ujson.dumps(document, escape_forward_slashes=False).encode()
    return body, f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'


def build(version: tuple | None, previous: Snapshot | None = None) -> Snapshot:
    """Read the rows and make a snapshot (``version`` read first: a write that lands in
    between is in the rows, and the next look sees a newer version).

    When only the runners' rows moved since ``previous`` (a fleet whose engines are in
    step: their runners' flushes carry their beats), its engine rows are used again: the
    ages and beats shown are worked out anew from them, without reading every row again.
    Whether they are still the database's is asked after the runners' rows are read, as
    readers must (``runners_seen``)."""
    now, seen = time.time(), runners_seen()
    rows = _rows_unchanged_since(previous, version)
    if rows is None:
        rows = list(Engine.objects.values(*STATUS_FIELDS, **BROKER_FIELDS))
    engines = [status_row(row, now, seen) for row in rows]
    counts = status_counts(engine["status"] for engine in engines)
    body, etag = encode({**counts, "matched": len(engines), "engines": engines})
    # The first lease shown live to expire turns its engine ``unknown``.
    expiries = [
        row["lease_expires_at"].timestamp()
        for row in rows
        if row["lease_owner"] and row["lease_expires_at"] is not None
    ]
    valid_until = min([now + MAX_AGE, *(at for at in expiries if at > now)])
    by_status: dict[str, list[dict[str, Any]]] = {status: [] for status in STATUSES}
    for engine in engines:
        by_status.setdefault(engine["status"], []).append(engine)
    return Snapshot(version, now, valid_until, rows, engines, counts, by_status, body, etag)


def _rows_unchanged_since(
    previous: Snapshot | None, version: tuple | None
) -> list[dict[str, Any]] | None:
    """``previous``'s engine rows if no engine row has changed since it was built."""
    if previous is None or previous.version is None or version is None:
        return None
    if previous.version[0] != version[0]:
        return None
    with connection.cursor() as cursor:
        now = _engines_version(cursor)
    return previous.rows if now == previous.version[0] else None


_lock = threading.Lock()
_latest: Snapshot | None = None


def fleet_snapshot(*, reads_only: bool = False) -> Snapshot:
    """The fleet's status as of now: this process's snapshot while it is current, else a
    new one (built by one thread while the others wait for it). ``reads_only``: see
    ``data_version``."""
    global _latest
    version = data_version(reads_only=reads_only)
    found = _latest
    if found is not None and found.current(version, time.time()):
        return found
    with _lock:
        found = _latest
        if found is not None and found.current(version, time.time()):
            return found
        _latest = found = build(version, found)
    return found


def fleet_page(
    snapshot: Snapshot,
    *,
    statuses: list[str] | None = None,
    prefix: str = "",
    page: int | None = None,
    page_size: int | None = None,
) -> dict[str, Any]:
    """The snapshot's engines with one of ``statuses`` (None: any) whose symbol starts
    with ``prefix``; page ``page`` of ``page_size`` of them when paged. The counts stay the
    whole fleet's; ``matched`` is how many engines passed the filters."""
    if statuses is None:
        engines = snapshot.engines
    elif len(statuses) == 1:
        engines = snapshot.by_status.get(statuses[0], [])
    else:
        wanted = set(statuses)
        engines = [engine for engine in snapshot.engines if engine["status"] in wanted]
    if prefix:
        engines = [engine for engine in engines if engine["symbol"].startswith(prefix)]
    document: dict[str, Any] = {**snapshot.counts, "matched": len(engines)}
    if page is not None or page_size is not None:
        page, page_size = page or 1, page_size or 50
        start = (page - 1) * page_size
        engines = engines[start : start + page_size]
        document |= {"page": page, "page_size": page_size}
    return document | {"engines": engines}
