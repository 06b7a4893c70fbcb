"""The runner's one boundary with the ORM. Plain synchronous functions: the runner calls
them through ``db`` so every query runs on one thread with one connection."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection, transaction
from django.db.models import (
    BooleanField,
    Count,
    ExpressionWrapper,
    F,
    Lookup,
    OuterRef,
    Q,
    Subquery,
    Sum,
)
from django.db.models.functions import Now
from django.db.models.query import QuerySet

from .. import vault
from ..models import (
    Engine,
    EngineCommand,
    EngineError,
    EnginePnlSample,
    EngineRestart,
    ExchangeAccount,
    RunnerHeartbeat,
    Trade,
    heartbeat_expression,
)
from ..runtime.broker import DAY, Book, utc_day
from ..runtime.brokers import Account
from ..runtime.engine import EngineState
from ..runtime.errors import ConfigError
from ..runtime.events import BookChanged, ErrorRaised, RestartScheduled
from ..runtime.exchanges import Credentials
from ..signals import engines_written

log = logging.getLogger("levipanel.runner")

# Repeats of an error an engine survived join one row per engine and kind for this long.
ERROR_WINDOW = timedelta(minutes=5)


def db(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run a store function on the runner's single database thread."""

    def call(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()  # drops a connection that broke or grew stale
        return func(*args, **kwargs)

    return sync_to_async(call, thread_sensitive=True)


def close_connection() -> None:
    """Drop the connection after a database error; the next query opens a fresh one."""
    connection.close()


def to_datetime(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class ControlRow:
    """What operators own of one engine."""

    id: int
    symbol: str
    desired_state: str
    cycle_interval: float | None
    config: Any  # the row's JSON options, as stored (``EngineConfig.from_options`` reads it)
    lease_owner: str = ""  # the runner holding it; "" when none
    lease_epoch: int = 0
    lease_live: bool = False  # held by a runner whose lease has not expired (database time)


@dataclass(frozen=True)
class StatusRow:
    id: int
    status: str
    reason: str
    started_at: float | None
    attempt: int
    budget_left: int | None
    next_retry_at: float | None
    error_count: int
    last_error: str | None
    changed_at: float | None = None  # when the status began; None: now
    code: str = ""  # why, for machines (``risk.DAILY_LOSS``): alerts key on it
    # The engine's last beat and tick: a status change takes it out of step with its
    # runner's flushes (``HeartbeatRow.in_step``), its own stored. None: as stored.
    last_heartbeat: float | None = None
    last_tick_at: float | None = None


@dataclass(slots=True)  # not frozen: made for every engine at every flush, at half the cost
class HeartbeatRow:
    id: int
    last_heartbeat: float | None
    error_count: int
    last_error: str | None
    position: float | None
    daily_pnl: float
    total_pnl: float
    trade_count: int
    last_tick_at: float | None = None
    # The recovery view, which changes while an engine runs (restarts leave the hour's
    # window, a stable run forgives the crash streak); None leaves the column as it is.
    restart_attempt: int | None = None
    restart_budget_left: int | None = None
    # False: only the beat (and the last tick) is new since the last flush; the rest of the
    # row is as stored, and is not written again.
    changed: bool = True
    # It beats in step with the runner's flushes from now on: its later beats are the
    # runner's ``beats_since``, and are not written again (``Engine.beats_with_runner``).
    in_step: bool = False


@dataclass(frozen=True)
class BookRow:
    """A fill (or a daily reset) of one engine: the Trade row, if any, and the engine's
    position and PnL right after it."""

    id: int
    event: BookChanged


@dataclass(frozen=True)
class PnlSampleRow:
    """One point of an engine's PnL chart, taken with a heartbeat flush."""

    id: int
    daily_pnl: float
    total_pnl: float


@dataclass(frozen=True)
class RunnerRow:
    """The runner's own heartbeat: who, since when, how many engines, cycle histogram."""

    name: str
    started_at: float
    engines: int
    cycle_histogram: dict
    host: str = ""
    pid: int | None = None
    held: int = 0
    stopped: bool = False  # it stopped on a signal and released its engines
    # Every engine it holds in step (``HeartbeatRow.in_step``) beat at or after this.
    beats_since: float | None = None
    # Its first flush: rows left in step under its name (by a process of the same name
    # before it) are taken out of step first.
    first: bool = False


@dataclass(frozen=True)
class Fence:
    """Whose writes these are: the runner, the epoch of each engine it holds, whether the
    write renews its leases (for ``lease`` seconds, database time) and which engines it
    gives up after their last rows are written."""

    runner: str
    epochs: Mapping[int, int]
    lease: float | None = None
    release: frozenset[int] = frozenset()


@dataclass
class Written:
    """What a fenced write could not do: engines no longer this runner's (nothing was
    written for them) and engines whose fills conflict with stored ones (likewise)."""

    lost: set[int] = field(default_factory=set)
    conflicts: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0  # how long the transaction took, commit included


@dataclass(frozen=True)
class Claim:
    """An engine this runner now holds, and the runner that held it before ("" if none)."""

    id: int
    symbol: str
    epoch: int
    previous: str


def seed_engines(symbols: list[str]) -> list[str]:
    """On an empty table, create the configured symbols, desired running."""
    if Engine.objects.exists():
        return []
    symbols = list(dict.fromkeys(symbols))  # a symbol listed twice is one engine
    Engine.objects.bulk_create([Engine(symbol=symbol) for symbol in symbols])
    return symbols


def ensure_engines(symbols: list[str]) -> list[str]:
    """Create the given symbols that do not exist yet (``runengines --symbols``)."""
    existing = set(Engine.objects.filter(symbol__in=symbols).values_list("symbol", flat=True))
    missing = [symbol for symbol in dict.fromkeys(symbols) if symbol not in existing]
    Engine.objects.bulk_create([Engine(symbol=symbol) for symbol in missing])
    return missing


def control_rows(symbols: list[str] | None = None) -> dict[str, ControlRow]:
    """Every engine's operator-owned fields and lease: one cheap query the runner polls."""
    live = ExpressionWrapper(
        ~Q(lease_owner="") & Q(lease_expires_at__gte=Now()), output_field=BooleanField()
    )
    rows = Engine.objects.annotate(lease_live=live).values_list(
        "id",
        "symbol",
        "desired_state",
        "cycle_interval",
        "config",
        "lease_owner",
        "lease_epoch",
        "lease_live",
    )
    if symbols is not None:
        rows = rows.filter(symbol__in=symbols)
    return {row[1]: ControlRow(*row) for row in rows}


def fleet_summary(runner: str, *, within: float, symbols: list[str] | None = None) -> tuple:
    """What a change of the fleet outside the commands moves: engines, those desired running,
    free leases, this runner's leases, and the live runners. Two small queries, whatever the
    fleet's size: the runner reads every control row again only when this changed."""
    free = Q(lease_owner="") | Q(lease_expires_at=None) | Q(lease_expires_at__lt=Now())
    rows = Engine.objects.all() if symbols is None else Engine.objects.filter(symbol__in=symbols)
    counts = rows.aggregate(
        engines=Count("id"),
        running=Count("id", filter=Q(desired_state=Engine.DesiredState.RUNNING)),
        free=Count("id", filter=free),
        mine=Count("id", filter=Q(lease_owner=runner)),
        claims=Sum("lease_epoch"),  # moves with every claim: an expiry claimed at once
    )
    return (*counts.values(), frozenset(live_runners(within=within)))


def live_runners(*, within: float, now: float | None = None) -> set[str]:
    """The runners whose heartbeat is younger than ``within`` seconds and did not stop."""
    now = datetime.now(UTC).timestamp() if now is None else now
    rows = RunnerHeartbeat.objects.live(to_datetime(now - within))
    return set(rows.values_list("name", flat=True))


def runner_in_use(name: str, *, within: float, host: str, pid: int) -> str | None:
    """Why ``name`` may not be taken: a live runner of another process uses it; else None."""
    row = RunnerHeartbeat.objects.filter(name=name, stopped_at=None).first()
    if row is None or (row.host, row.pid) == (host, pid):
        return None
    if row.host == host and row.pid and not _process_alive(row.pid):
        return None  # its process on this host is gone (killed): the name is free
    age = datetime.now(UTC) - row.last_seen
    if age > timedelta(seconds=within):
        return None
    return (
        f"runner name {name!r} is in use by pid {row.pid} on {row.host or '?'} (last seen "
        f"{age.total_seconds():.1f}s ago): give each runner its own LEVIPANEL_RUNNER_NAME, "
        "or leave it unset (host:pid)"
    )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def claim_engines(
    runner: str,
    *,
    limit: int,
    lease: float,
    symbols: list[str] | None = None,
    exclusive: bool = False,
) -> list[Claim]:
    """Claim up to ``limit`` engines that no runner holds (free, or their lease expired by
    the database's clock), bumping each one's epoch; with ``exclusive`` (this runner holds
    the whole database) every engine not already this runner's. Rows another runner is
    claiming at the same moment are skipped, not waited for."""
    if limit <= 0:
        return []
    free = Q(lease_owner="") | Q(lease_expires_at=None) | Q(lease_expires_at__lt=Now())
    if exclusive:
        free = ~Q(lease_owner=runner)
    with transaction.atomic():
        rows = Engine.objects.filter(free)
        if symbols is not None:
            rows = rows.filter(symbol__in=symbols)
        found = list(
            rows.select_for_update(skip_locked=True)
            .order_by("id")
            .values_list("id", "symbol", "lease_owner", "lease_epoch")[:limit]
        )
        if not found:
            return []
        out_of_step(
            _of(Engine.objects.all(), "id", [row[0] for row in found]),
            lease_owner=runner,
            lease_epoch=F("lease_epoch") + 1,
            lease_expires_at=Now() + timedelta(seconds=lease),
            updated_at=Now(),  # open dashboards show the new runner
        )
    claims = [Claim(pk, symbol, epoch + 1, previous) for pk, symbol, previous, epoch in found]
    taken: dict[str, list[str]] = defaultdict(list)
    for claim in claims:
        if claim.previous and claim.previous != runner:
            taken[claim.previous].append(claim.symbol)
    if taken:
        takeovers = [
            {"runner": runner, "previous": previous, "symbols": symbols}
            for previous, symbols in taken.items()
        ]
        engines_written.send(sender=Engine, takeovers=takeovers)
    return claims


def load_states(
    symbols: list[str] | None, now: float | None = None
) -> dict[str, tuple[str, EngineState]]:
    """Each engine's last status and the counters that survive a runner restart (of every
    engine, with ``symbols`` None). Position and PnL come from the Trade rows, never from
    the engine row (a cache of them); where today's count starts comes from the row (see
    ``_restore_day``)."""
    now = datetime.now(UTC).timestamp() if now is None else now
    fields = ("id", "symbol", "status", "error_count", "last_error", *DAY_COLUMNS, "total_pnl")
    rows = _of(Engine.objects.all(), "symbol", symbols).values_list(*fields)
    engines = {pk: rest for pk, *rest in rows}
    books = rebuild_books(None if symbols is None else list(engines), now)
    out = {}
    for pk, (symbol, status, errors, last_error, *stored) in engines.items():
        book = books.get(pk) or Book()
        _restore_day(book, utc_day(now), *stored)
        state = EngineState(errors, last_error or None, book=book)
        state.sync()
        out[symbol] = (status, state)
    return out


def _restore_day(
    book: Book, today: int, day: date | None, day_start: float, loss_base: float, total: float
) -> None:
    """Start ``book``'s day as stored: today's start and an operator's lift of a halt hold
    as they were. Stored for an earlier day, today starts at the last total stored (marked
    at the last price known before today); never stored, at the ledger's (``rebuild_books``)."""
    if day is None:
        return
    book.day = today
    if to_date(today) == day:
        book.day_start, book.loss_base = day_start, loss_base
    else:
        book.day_start, book.loss_base = total, 0.0


def halted_on(symbols: list[str] | None, now: float) -> set[str]:
    """The engines a risk limit halted on the UTC day of ``now``: they stay halted until
    the next day or an operator's restart, whichever runner runs them."""
    day_start = to_datetime(now - now % 86_400)
    rows = Engine.objects.filter(status=Engine.Status.HALTED, status_changed_at__gte=day_start)
    return set(_of(rows, "symbol", symbols).values_list("symbol", flat=True))


def _of(rows: QuerySet, name: str, values: list | None) -> QuerySet:
    """``rows`` whose ``name`` is one of ``values``; all of them with None (a whole fleet:
    no list of ten thousand parameters to build and send). On PostgreSQL the values go as
    one array (``AnyOf``)."""
    if values is None:
        return rows
    if connection.vendor == "postgresql":
        return rows.filter(AnyOf(F(name), list(values)))
    return rows.filter(**{f"{name}__in": values})


class AnyOf(Lookup):
    """``column = ANY(%s)``, the values one array parameter (PostgreSQL). An ``__in`` of a
    claim batch is a thousand placeholders, each prepared by Django's lookup and found and
    quoted by psycopg in Python: ``load_states`` of a batch took 30 ms with it, 15 without,
    and a batch reads by such a list four times (ten batches start 10,000 engines)."""

    lookup_name = "any_of"

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list]:
        lhs, params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(%s)", [*params, self.rhs.value]  # a filter makes it a Value


def rebuild_books(engine_ids: list[int] | None, now: float) -> dict[int, Book]:
    """Each engine's book from its Trade rows (of every engine, with ``engine_ids`` None):
    the newest row carries position, average entry and running totals; the newest row
    before today (UTC) the total today starts from, as ``broker.replay`` counts it. Three
    queries in all."""
    trades = _of(Trade.objects.all(), "engine_id", engine_ids)
    newest = Trade.objects.filter(engine_id=OuterRef("engine_id")).order_by("-seq").values("seq")
    books: dict[int, Book] = {}
    today = utc_day(now)
    columns = "seq price position_after avg_price_after realized_total fees_total".split()
    last = trades.filter(seq=Subquery(newest[:1])).values_list("engine_id", *columns)
    for engine_id, seq, price, qty, avg, realized, fees in last:
        book = books[engine_id] = Book()
        book.qty, book.avg_price, book.realized, book.fees = qty, avg, realized, fees
        book.trade_count, book.mark, book.day = seq, price, today
    midnight = to_datetime(today * DAY)
    before = newest.filter(time__lt=midnight)
    for engine_id, _, price, qty, avg, realized, fees in trades.filter(
        time__lt=midnight, seq=Subquery(before[:1])
    ).values_list("engine_id", *columns):
        # The book's own total_pnl() at that fill, marked at its price: the same floats.
        at_fill = Book()
        at_fill.qty, at_fill.avg_price, at_fill.realized, at_fill.fees = qty, avg, realized, fees
        at_fill.mark = price
        books[engine_id].day_start = at_fill.total_pnl()
    for engine_id, closes, wins in (
        trades.filter(realized_pnl__isnull=False)
        .values("engine_id")
        .annotate(c=Count("id"), w=Count("id", filter=Q(realized_pnl__gt=F("fee"))))
        .values_list("engine_id", "c", "w")
    ):
        books[engine_id].closes, books[engine_id].wins = closes, wins
    return books


def restart_history(window: float, now: float) -> dict[str, tuple[list[float], int]]:
    """Per symbol: restart times inside the window and the last attempt number."""
    since = to_datetime(now - window)
    history: dict[str, tuple[list[float], int]] = {}
    rows = (
        EngineRestart.objects.filter(at__gt=since)
        .filter(Q(engine__failures_reset_at=None) | Q(engine__failures_reset_at__lt=F("at")))
        .order_by("at")
        .values_list("engine__symbol", "at", "attempt")
    )
    for symbol, at, attempt in rows:
        times, _ = history.get(symbol, ([], 0))
        times.append(at.timestamp())
        history[symbol] = (times, attempt)
    return history


@dataclass(frozen=True)
class CommandRow:
    id: int
    symbol: str
    action: str
    created_at: float = 0.0
    engine_id: int | None = None


@dataclass(frozen=True)
class Ack:
    id: int
    outcome: str
    message: str
    engine_id: int | None = None  # None: the engine is gone (removed)


def latest_command_id() -> int:
    """The newest command's id (0 when none): every operator change records one."""
    return EngineCommand.objects.order_by("-id").values_list("id", flat=True).first() or 0


def pending_commands(runner: str, symbols: list[str] | None = None) -> list[CommandRow]:
    """Commands not carried out yet for the engines ``runner`` holds, or whose engine is
    gone, oldest first."""
    rows = EngineCommand.objects.filter(acked_at=None).filter(
        Q(engine__lease_owner=runner) | Q(engine=None)
    )
    if symbols is not None:
        rows = rows.filter(symbol__in=symbols)
    rows = rows.order_by("id").values_list("id", "symbol", "action", "created_at", "engine_id")
    return [
        CommandRow(pk, symbol, action, at.timestamp(), engine_id)
        for pk, symbol, action, at, engine_id in rows
    ]


def write(
    *,
    statuses: list[StatusRow],
    errors: list[EngineError],
    restarts: list[EngineRestart],
    heartbeats: list[HeartbeatRow],
    acks: list[Ack] = (),
    books: list[BookRow] = (),
    runner: RunnerRow | None = None,
    pnl_samples: list[PnlSampleRow] = (),
    fence: Fence | None = None,
    unstep: Iterable[int] = (),
) -> Written:
    """Everything the runner has to say, in one transaction; then tell the receivers.
    A fill's Trade row and the position it leads to commit together, or not at all.

    With a ``fence`` (always, from the runner) only the rows of engines the runner still
    holds at its epoch are written, checked on rows locked in this transaction, so no
    other runner can take them over before it commits; the rest is dropped and reported.
    ``unstep``: engines in step with this runner with no row in this write to take them
    out of step (no longer tracked, or no longer held at its epochs: given up when it
    fenced itself, say), taken out of step where it is still their owner: its row no
    longer vouches for them."""
    written = Written()
    if not any((statuses, errors, restarts, heartbeats, acks, books, runner, pnl_samples, unstep)):
        if fence is None or not (fence.lease or fence.release):
            return written
    began, now = time.perf_counter(), datetime.now(UTC)
    beating = {r.id for r in heartbeats}
    renewed = False  # the leases of the engines not beating renewed by the fence already
    with transaction.atomic():
        if runner is not None and runner.first:
            out_of_step(Engine.objects.filter(lease_owner=runner.name, beats_with_runner=True))
        if fence is not None:
            touched = {r.id for r in (*statuses, *heartbeats, *books, *pnl_samples)}
            touched |= {r.engine_id for r in (*errors, *restarts)}
            touched |= {a.engine_id for a in acks if a.engine_id is not None}
            valid, written.lost, renewed = _fenced(fence, touched | fence.release, beating)
            written.conflicts = _fill_conflicts([r for r in books if r.id in valid])
            valid -= set(written.conflicts)
            statuses = [r for r in statuses if r.id in valid]
            heartbeats = [r for r in heartbeats if r.id in valid]
            books = [r for r in books if r.id in valid]
            pnl_samples = [r for r in pnl_samples if r.id in valid]
            errors = [r for r in errors if r.engine_id in valid]
            restarts = [r for r in restarts if r.engine_id in valid]
            acks = [a for a in acks if a.engine_id is None or a.engine_id in valid]
        _write_rows(statuses, errors, restarts, acks, now, fence)
        if books:
            _write_books(books, now, fence)
        lease_until = None
        if fence is not None and fence.lease is not None and (heartbeats or not renewed):
            lease_until = _database_now() + timedelta(seconds=fence.lease)
        if heartbeats:
            _flush_heartbeats(heartbeats, now, lease_until)
        if lease_until is not None and not renewed:  # the engines that did not beat
            _renew(valid - beating, lease_until)
        if pnl_samples:
            _sample_pnl(pnl_samples, now)
        if unstep and fence is not None:
            for chunk in _chunks(sorted(unstep)):
                out_of_step(Engine.objects.filter(lease_owner=fence.runner, id__in=chunk))
        if fence is not None and fence.release:
            released = Engine.objects.filter(id__in=fence.release & valid, lease_owner=fence.runner)
            out_of_step(released, lease_owner="", lease_expires_at=None, updated_at=now)
        if runner is not None:
            _runner_heartbeat(runner, now)
    written.seconds = time.perf_counter() - began
    engines_written.send(
        sender=Engine,
        statuses=statuses,
        errors=errors,
        restarts=restarts,
        heartbeats=bool(heartbeats) or runner is not None,
        acks=acks,
        books=books,
    )
    return written


def out_of_step(engines: QuerySet, **fields: Any) -> None:
    """Update ``engines`` with ``fields``, each with the heartbeat and last tick it shows
    now stored on its own row, and no longer in step with a runner (it changes hands, its
    runner begins again or gave it up)."""
    engines.update(
        **fields,
        beats_with_runner=False,
        last_heartbeat=heartbeat_expression(),
        last_tick_at=heartbeat_expression("last_tick_at"),
    )


def _fenced(
    fence: Fence, touched: set[int], beating: set[int] = frozenset()
) -> tuple[set[int], set[int], bool]:
    """The engines of ``touched`` (all it holds, when renewing) this runner still holds at
    its epochs, their rows locked until the transaction ends; the ones it lost; and whether
    the leases of those not ``beating`` were renewed on the way.

    A renewal (or a write of many engines) finds the rows by their owner, in one plain
    query, not by a list of every id: the statement is the same whatever the fleet's size.
    On PostgreSQL a renewal is that statement (``_renew_held``) for the engines whose beats
    are not written (a row updated twice in one transaction no longer fits its page: see
    migration 0014); the statements of the beats renew the others (``_flush_heartbeats``),
    as they do every engine's elsewhere, with ``_renew``. Either way only the engines found
    valid here are renewed: one the runner gave up (self-fenced) expires."""
    asked = set(fence.epochs) | touched if fence.lease is not None else touched
    renewed = fence.lease is not None and connection.vendor == "postgresql"
    if renewed:
        held = _renew_held(fence, set(fence.epochs) - beating)
        if beating & asked:
            held.update(_held_by(fence.runner, sorted(beating & asked)))
    elif fence.lease is None and len(asked) <= FEW_IDS:
        held = _held_by(fence.runner, sorted(asked))
    else:
        held = _held_by(fence.runner)
    valid = {pk for pk in asked if held.get(pk, -1) == fence.epochs.get(pk)}
    return valid, (asked & fence.epochs.keys()) - valid, renewed


FEW_IDS = 500  # a write of up to this many engines looks them up by id; else by owner


def _renew_held(fence: Fence, ids: set[int]) -> dict[int, int]:
    """PostgreSQL: renew the leases this runner holds among ``ids`` (engines of its
    epochs: one it gave up must expire), by the database's clock, and return them (id ->
    epoch), their rows locked: the fence and the renewal in one statement, where a
    SELECT … FOR UPDATE and an UPDATE of every row were two. ``_fenced`` keeps those still
    at the epoch it claimed."""
    if not ids:
        return {}
    table = connection.ops.quote_name(Engine._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} "
            "SET lease_expires_at = STATEMENT_TIMESTAMP() + %s * INTERVAL '1 second' "
            f"WHERE lease_owner = %s AND id = ANY({ID_ARRAY}) RETURNING id, lease_epoch",
            [fence.lease, fence.runner, id_text(ids)],
        )
        return dict(cursor.fetchall())


def _held_by(runner: str, ids: list[int] | None = None) -> dict[int, int]:
    """id -> lease epoch of every engine ``runner`` holds (among ``ids``, if given), the
    rows locked (PostgreSQL)."""
    if ids is not None and not ids:
        return {}
    table = connection.ops.quote_name(Engine._meta.db_table)
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    conditions = [("", [])] if ids is None else [(f" AND {w}", p) for w, p in _id_lists(ids)]
    held: dict[int, int] = {}
    with connection.cursor() as cursor:
        for where, params in conditions:
            cursor.execute(
                f"SELECT id, lease_epoch FROM {table} WHERE lease_owner = %s{where}{lock}",
                [runner, *params],
            )
            held.update(cursor.fetchall())
    return held


def _database_now() -> datetime:
    """The database's clock: leases expire by it, whichever host's runner renews them."""
    if connection.vendor == "postgresql":
        sql = "SELECT STATEMENT_TIMESTAMP()"
    else:
        sql = "SELECT STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW')"
    with connection.cursor() as cursor:
        cursor.execute(sql, [])  # with parameters, so that %% is % on every backend
        value = cursor.fetchone()[0]
    if isinstance(value, str):
        value = datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value


def _renew(engine_ids: set[int], lease_until: datetime) -> None:
    if not engine_ids:
        return
    until = connection.ops.adapt_datetimefield_value(lease_until)
    table = connection.ops.quote_name(Engine._meta.db_table)
    with connection.cursor() as cursor:
        for where, ids in _id_lists(sorted(engine_ids)):
            cursor.execute(f"UPDATE {table} SET lease_expires_at = %s WHERE {where}", [until, *ids])


def _fill_conflicts(rows: Iterable[BookRow]) -> dict[int, str]:
    """Engines whose new fills take a sequence number another fill already has. A fill
    stored already under its own id is this write retried (its commit's answer was lost):
    not a conflict."""
    fills = [(row.id, row.event.fill) for row in rows if row.event.fill is not None]
    if not fills:
        return {}
    existing = Trade.objects.filter(
        engine_id__in={engine_id for engine_id, _ in fills},
        seq__in={fill.seq for _, fill in fills},
    ).values_list("engine_id", "seq", "fill_id")
    stored = {(engine_id, seq): fill_id for engine_id, seq, fill_id in existing}
    conflicts = {}
    for engine_id, fill in fills:
        other = stored.get((engine_id, fill.seq))
        if other is not None and other != fill.fill_id:
            conflicts[engine_id] = (
                f"fill {fill.fill_id} takes seq {fill.seq}, which fill {other} already has"
            )
    for engine_id, why in conflicts.items():
        log.error("fill conflict engine_id=%s: %s", engine_id, why)
    return conflicts


def _write_rows(statuses, errors, restarts, acks, now: datetime, fence: Fence | None) -> None:
    for ack in acks:
        EngineCommand.objects.filter(id=ack.id, acked_at=None).update(
            acked_at=now,
            outcome=ack.outcome,
            message=ack.message,
            acked_by=fence.runner if fence else "",
        )
    if statuses:
        _write_statuses(statuses, now)
    _write_errors(errors)
    EngineRestart.objects.bulk_create(restarts)


# A column of ``update_each``: its name, its PostgreSQL type, and whether None keeps the
# stored value.
Column = tuple[str, str, bool]


# A status row's columns (``_write_statuses``), as ``update_each`` takes them: then its
# beat and last tick, each kept as stored when None.
STATUS_COLUMNS: list[Column] = [
    ("status", "text", False),
    ("status_reason", "text", False),
    ("status_changed_at", "timestamptz", False),
    ("started_at", "timestamptz", False),
    ("restart_attempt", "integer", False),
    ("restart_budget_left", "integer", False),
    ("next_retry_at", "timestamptz", False),
    ("error_count", "integer", False),
    ("last_error", "text", False),
    ("updated_at", "timestamptz", False),
    ("last_heartbeat", "timestamptz", True),
    ("last_tick_at", "timestamptz", True),
]


def _write_statuses(rows: list[StatusRow], now: datetime) -> None:
    """One statement, like the heartbeats: a whole fleet starting is one UPDATE
    (``update_each``). A new status takes the engine out of step with its runner
    (``HeartbeatRow.in_step``): a stopped or crashed engine shows its own last beat at
    once, not its runner's flush."""
    adapt = connection.ops.adapt_datetimefield_value
    stamp = adapt(now)
    params = [
        (
            row.status,
            row.reason,
            adapt(to_datetime(row.changed_at)) if row.changed_at else stamp,
            adapt(to_datetime(row.started_at)),
            row.attempt,
            row.budget_left,
            adapt(to_datetime(row.next_retry_at)),
            row.error_count,
            row.last_error or "",
            stamp,
            adapt(to_datetime(row.last_heartbeat)),
            adapt(to_datetime(row.last_tick_at)),
            row.id,
        )
        for row in rows
    ]
    in_step = connection.ops.quote_name("beats_with_runner")
    with connection.cursor() as cursor:
        update_each(cursor, STATUS_COLUMNS, params, fixed=[f"{in_step} = FALSE"])


def _write_books(rows: list[BookRow], now: datetime, fence: Fence | None) -> None:
    fills = [(row.id, row.event.fill) for row in rows if row.event.fill is not None]
    # A retried write (the commit's answer was lost) must not double a fill: one stored
    # under its own fill_id already is skipped. Any other clash of (engine, seq) is an
    # IntegrityError, never skipped in silence (``_fill_conflicts`` catches it first).
    stored = set(
        Trade.objects.filter(fill_id__in=[fill.fill_id for _, fill in fills]).values_list(
            "fill_id", flat=True
        )
    )
    runner = fence.runner if fence else ""
    epochs = fence.epochs if fence else {}
    Trade.objects.bulk_create(
        [
            trade_row(engine_id, fill, runner=runner, epoch=epochs.get(engine_id, 0))
            for engine_id, fill in fills
            if fill.fill_id not in stored
        ]
    )
    latest = {row.id: row.event for row in rows}
    stamp = connection.ops.adapt_datetimefield_value(now)
    params = [
        (e.position, e.daily_pnl, e.total_pnl, e.trade_count, stamp, *_day_params(e), engine_id)
        for engine_id, e in latest.items()
    ]
    with connection.cursor() as cursor:
        update_each(cursor, BOOK_COLUMNS, params)


# A book's columns (``_write_books``), as ``update_each`` takes them: where the engine's
# day starts last, each kept as stored when None (``BookChanged.day`` None).
BOOK_COLUMNS: list[Column] = [
    ("position", "float8", False),
    ("daily_pnl", "float8", False),
    ("total_pnl", "float8", False),
    ("trade_count", "integer", False),
    ("updated_at", "timestamptz", False),
    ("pnl_day", "date", True),
    ("day_start_pnl", "float8", True),
    ("loss_base", "float8", True),
]
DAY_COLUMNS = tuple(name for name, _, _ in BOOK_COLUMNS[-3:])


def _day_params(event: BookChanged) -> tuple:
    if event.day is None:
        return (None, None, None)
    day = connection.ops.adapt_datefield_value(to_date(event.day))
    return (day, event.day_start, event.loss_base)


EPOCH = date(1970, 1, 1)


def to_date(day: int) -> date:
    """The date of a UTC day number (``broker.utc_day``)."""
    return EPOCH + timedelta(days=day)


# The Trade columns a Fill carries under the same name.
FILL_FIELDS = (
    "symbol fill_id seq side qty price fee realized_pnl position_after avg_price_after "
    "realized_total fees_total"
).split()


def trade_row(engine_id: int, fill, *, runner: str = "", epoch: int = 0) -> Trade:
    values = {name: getattr(fill, name) for name in FILL_FIELDS}
    return Trade(
        engine_id=engine_id, time=to_datetime(fill.at), runner=runner, epoch=epoch, **values
    )


def _flush_heartbeats(
    rows: list[HeartbeatRow], now: datetime, lease_until: datetime | None = None
) -> None:
    """Beats, and the rows whose values changed. A flush of a quiet fleet is a few
    statements, not one per engine: the beats within the same ``BEAT_GRAIN`` seconds are
    stored as one UPDATE of their ids, at the start of their grain (never later than the
    beat). A beat alone does not stamp ``updated_at``: that column (indexed, for the
    readers that look for changed rows) moves with what a page shows, and a beat is in the
    runner's heartbeat row already. A row whose values changed is one UPDATE with its beat
    (``_value_params``), stamped: an executemany on SQLite, one JSON text on PostgreSQL."""
    quote = connection.ops.quote_name
    table = quote(Engine._meta.db_table)
    adapt = connection.ops.adapt_datetimefield_value
    stamp = adapt(now)
    until = None if lease_until is None else adapt(lease_until)
    beats = [row for row in rows if not row.changed]
    groups: dict[tuple[int | None, int | None, bool], list[int]] = defaultdict(list)
    for row in beats:
        groups[_grain(row.last_heartbeat), _grain(row.last_tick_at), row.in_step].append(row.id)
    ticks = []
    if len(groups) > MAX_GROUPS:  # ticks on schedules of their own: by beat alone, then ticks
        groups = defaultdict(list)
        for row in beats:
            groups[_grain(row.last_heartbeat), None, row.in_step].append(row.id)
        ticks = [(_at_grain(_grain(r.last_tick_at), adapt), r.id) for r in beats]
    beat, tick = quote("last_heartbeat"), quote("last_tick_at")
    lease = quote("lease_expires_at")  # renewed in the same statement, with a lease
    in_step = quote("beats_with_runner")
    with connection.cursor() as cursor:
        for (beat_grain, tick_grain, step), ids in groups.items():
            for where, params in _id_lists(ids):
                cursor.execute(
                    f"UPDATE {table} SET {beat} = %s, {tick} = COALESCE(%s, {tick}), "
                    f"{in_step} = %s, {lease} = COALESCE(%s, {lease}) WHERE {where}",
                    [
                        _at_grain(beat_grain, adapt),
                        _at_grain(tick_grain, adapt),
                        step,
                        until,
                        *params,
                    ],
                )
        if ticks:
            update_each(cursor, [("last_tick_at", "timestamptz", True)], ticks)
        changed = [_value_params(row, stamp, adapt, until) for row in rows if row.changed]
        if changed:
            update_each(cursor, VALUE_COLUMNS, changed, when_changed="updated_at")


def update_each(
    cursor: Any,
    columns: list[Column],
    rows: list[tuple],
    *,
    fixed: Iterable[str] = (),
    when_changed: str | None = None,
) -> None:
    """One UPDATE of engine rows, each of ``rows`` a value per column then the id; the
    ``fixed`` assignments too. One JSON text on PostgreSQL (``_update_from_json``), an
    ``executemany`` elsewhere. ``when_changed``: a column set only where a column before it
    differs from the stored value, on PostgreSQL: a row written again with nothing new (a
    refresh) changes no indexed column then, and is a HOT update (see migration 0014).
    SQLite rewrites the row whatever changed, and stamps it."""
    quote = connection.ops.quote_name
    postgresql = connection.vendor == "postgresql"
    sets, new = [], []
    for i, (name, _, keep) in enumerate(columns):
        column = quote(name)
        value = f"v.c{i}" if postgresql else "%s"
        if keep:
            value = f"COALESCE({value}, {f't.{column}' if postgresql else column})"
        if postgresql and name == when_changed:
            stored = ", ".join(f"t.{quote(c)}" for c, _, _ in columns[:i])
            value = f"CASE WHEN ({stored}) IS DISTINCT FROM ({', '.join(new)}) "
            value += f"THEN v.c{i} ELSE t.{column} END"
        new.append(value)
        sets.append(f"{column} = {value}")
    sets += fixed
    table = quote(Engine._meta.db_table)
    if postgresql:
        _update_from_json(cursor, table, sets, [t for _, t, _ in columns], rows)
    else:
        cursor.executemany(f"UPDATE {table} SET {', '.join(sets)} WHERE id = %s", rows)


def _update_from_json(
    cursor: Any, table: str, sets: list[str], types: list[str], rows: list[tuple]
) -> None:
    """One UPDATE … FROM jsonb_array_elements(…) of ``rows`` (each: a value per type, then
    the id), on PostgreSQL: the rows go as one JSON text, each row an array the server
    takes apart and casts column by column.

    Not ``executemany``: psycopg pipelines it, and a runner paused between two of its
    statements leaves its session neither idle nor running a statement, so no server
    timeout ends it and its row locks keep every other runner from its engines. Not a
    VALUES list: psycopg splits a query's placeholders in Python, some microseconds each,
    and ten thousand rows have a hundred thousand of them. Not an array a column either:
    psycopg builds an array's text element by element, two regular expressions each: more
    than half of a whole fleet's flush under cProfile (1.0 s of 1.86 s). The standard
    library's JSON encoder writes the same values at C speed, and ``jsonb`` parses each row
    once (with ``json`` each ``->>`` parsed it again: 460 against 350 ms for 10,000 status
    rows). The ids go twice: in the rows, and as a condition on the table's own ids, which
    the planner looks up by the primary key (joined with the rows alone, it read the whole
    table for a few rows).
    """
    columns = [f"(e->>{i})::{t} AS c{i}" for i, t in enumerate(types)]
    columns.append(f"(e->>{len(types)})::bigint AS id")
    cursor.execute(
        f"UPDATE {table} AS t SET {', '.join(sets)} "
        f"FROM (SELECT {', '.join(columns)} FROM jsonb_array_elements(%s::jsonb) AS e) AS v "
        f"WHERE t.id = ANY({ID_ARRAY}) AND t.id = v.id",
        [json_rows(rows), id_text(row[-1] for row in rows)],
    )


def json_rows(rows: list[tuple]) -> str:
    """``rows`` as one JSON text for ``_update_from_json``: dates and times in ISO 8601
    (exact, with their offset); a float that is not finite as the text PostgreSQL reads
    for it ('NaN', 'Infinity'), which JSON has no number for."""
    options = {"default": _iso, "allow_nan": False, "ensure_ascii": False, "separators": (",", ":")}
    try:
        return json.dumps(rows, **options)
    except ValueError:  # a NaN or an infinity: rare, so looked for only then
        rows = [tuple(_finite_or_text(value) for value in row) for row in rows]
        return json.dumps(rows, **options)


def _iso(value: Any) -> str:
    if isinstance(value, date):  # datetimes too
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a column value")


def _finite_or_text(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


BEAT_GRAIN = 0.1  # seconds: the precision of a stored heartbeat
IN_CHUNK = 5000  # ids per IN list at most
MAX_GROUPS = 64  # beat and tick grains: past this, one statement per row is cheaper
# A changed row's columns (``_value_params``), as ``update_each`` takes them. The recovery
# view, the last tick and the lease keep their stored values when None.
VALUE_COLUMNS: list[Column] = [
    ("error_count", "integer", False),
    ("last_error", "text", False),
    ("position", "float8", False),
    ("daily_pnl", "float8", False),
    ("total_pnl", "float8", False),
    ("trade_count", "integer", False),
    ("restart_attempt", "integer", True),
    ("restart_budget_left", "integer", True),
    ("updated_at", "timestamptz", False),  # stamped where a value changed (PostgreSQL)
    ("last_heartbeat", "timestamptz", False),
    ("last_tick_at", "timestamptz", True),
    ("beats_with_runner", "boolean", False),
    ("lease_expires_at", "timestamptz", True),
]


def _grain(ts: float | None) -> int | None:
    return None if ts is None else int(ts // BEAT_GRAIN)


def _at_grain(grain: int | None, adapt: Callable[[Any], Any]) -> Any:
    return None if grain is None else adapt(to_datetime(round(grain * BEAT_GRAIN, 6)))


# Ids as one parameter on PostgreSQL: a text of digits and commas, made an array by the
# server. Django's cursors bind parameters on the client, and psycopg quotes a list
# element by element (a regular expression each); a text is quoted once. Not a list of
# placeholders either: psycopg splits a query's placeholders in Python, microseconds each.
ID_ARRAY = "string_to_array(%s, ',')::bigint[]"


def id_text(ids: Iterable[int]) -> str:
    return ",".join(map(str, ids))


def _id_lists(ids: list[int]) -> Iterator[tuple[str, list]]:
    """Conditions on ``id`` that cover ``ids``, with their parameters: one array on
    PostgreSQL (``ID_ARRAY``), IN lists within the parameter limit elsewhere."""
    if connection.vendor == "postgresql":
        yield f"id = ANY({ID_ARRAY})", [id_text(ids)]
        return
    for chunk in _chunks(ids):
        yield f"id IN ({', '.join(['%s'] * len(chunk))})", chunk


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    """``ids`` in lists short enough for the backend's limit on parameters (999 on an older
    SQLite), with room for a statement's other parameters."""
    size = min(IN_CHUNK, (connection.features.max_query_params or IN_CHUNK) - 8)
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _value_params(
    row: HeartbeatRow, stamp: Any, adapt: Callable[[Any], Any], until: Any = None
) -> tuple:
    """One row's parameters: ``VALUE_COLUMNS``: its values, ``updated_at``, its beat, its
    last tick, whether it is in step, its lease (None: as it is), id."""
    return (
        row.error_count,
        row.last_error or "",
        row.position,
        row.daily_pnl,
        row.total_pnl,
        row.trade_count,
        row.restart_attempt,
        row.restart_budget_left,
        stamp,
        _at_grain(_grain(row.last_heartbeat), adapt),
        _at_grain(_grain(row.last_tick_at), adapt),
        row.in_step,
        until,
        row.id,
    )


def _sample_pnl(rows: list[PnlSampleRow], now: datetime) -> None:
    """One INSERT of a PnL point for each of ``rows``: from arrays on PostgreSQL, one a
    column (``bulk_create`` made a model and four placeholders a row, and psycopg split and
    quoted each: 0.45 s for 10,000, against 0.056 s), an ``executemany`` elsewhere."""
    quote = connection.ops.quote_name
    table = quote(EnginePnlSample._meta.db_table)
    columns = ", ".join(quote(c) for c in ("engine_id", "at", "daily_pnl", "total_pnl"))
    at = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT v.id, %s, v.d, v.t "
                f"FROM unnest({ID_ARRAY}, %s::float8[], %s::float8[]) AS v(id, d, t)",
                [
                    at,
                    id_text(r.id for r in rows),
                    [r.daily_pnl for r in rows],
                    [r.total_pnl for r in rows],
                ],
            )
        else:
            cursor.executemany(
                f"INSERT INTO {table} ({columns}) VALUES (%s, %s, %s, %s)",
                [(r.id, at, r.daily_pnl, r.total_pnl) for r in rows],
            )


def _runner_heartbeat(row: RunnerRow, now: datetime) -> None:
    fields = {
        "started_at": to_datetime(row.started_at),
        "last_seen": now,
        "engines": row.engines,
        "cycle_histogram": row.cycle_histogram,
        "host": row.host,
        "pid": row.pid,
        "held": row.held,
        "stopped_at": now if row.stopped else None,
        "beats_since": to_datetime(row.beats_since),
    }
    if not RunnerHeartbeat.objects.filter(name=row.name).update(**fields):
        RunnerHeartbeat.objects.create(name=row.name, **fields)


def error_row(engine_id: int, event: ErrorRaised) -> EngineError:
    at = to_datetime(event.at)
    return EngineError(
        engine_id=engine_id,
        at=at,
        last_at=at,
        type=event.type[:100],
        message=event.message,
        last_message=event.message,
        traceback=event.traceback,
        fatal=event.fatal,
        crashed=event.crashed,
    )


def repeat(row: EngineError, event: ErrorRaised) -> None:
    """Fold one more occurrence of a survived error into its row."""
    row.count += 1
    row.last_at = to_datetime(event.at)
    row.last_message = event.message


def _write_errors(errors: list[EngineError]) -> None:
    """Crashes one row each; an error an engine survived joins the row of its kind opened
    within ``ERROR_WINDOW`` (repeat count, last time, last message), or opens one."""
    new = [row for row in errors if row.crashed]
    for row in (row for row in errors if not row.crashed):
        latest = (
            EngineError.objects.filter(
                engine_id=row.engine_id,
                type=row.type,
                crashed=False,
                at__gte=row.at - ERROR_WINDOW,
            )
            .order_by("-at")
            .values("id")[:1]
        )
        folded = EngineError.objects.filter(id__in=Subquery(latest)).update(
            count=F("count") + row.count, last_at=row.last_at, last_message=row.last_message
        )
        if not folded:
            new.append(row)
    EngineError.objects.bulk_create(new)


def restart_row(engine_id: int, event: RestartScheduled) -> EngineRestart:
    return EngineRestart(
        engine_id=engine_id,
        at=to_datetime(event.at),
        reason=event.reason,
        attempt=event.attempt,
        backoff_seconds=event.backoff,
    )


def exchange_account(name: str) -> Account | None:
    """An exchange account, keys decrypted (never logged): None when there is none. A key
    that does not decrypt is a ConfigError: no retry can fix it."""
    account = ExchangeAccount.objects.filter(name=name).first()
    if account is None:
        return None
    try:
        credentials = Credentials(
            vault.decrypt(account.api_key_encrypted),
            vault.decrypt(account.secret_encrypted),
            vault.decrypt(account.password_encrypted) if account.password_encrypted else "",
        )
    except vault.VaultError as exc:
        raise ConfigError(f"exchange account {name!r}: {exc}") from None
    return Account(account.name, account.exchange, account.testnet, credentials)
