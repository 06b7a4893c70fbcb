"""The writer: batches what the engines did into the database, through ``store.write``.

Status changes, errors, restarts and command acknowledgements are written at once (on the
runner loop's next turn). Fills ride along with the next write, or go after
``FILL_DELAY``. Heartbeats, the runner's own row and (every ``pnl_interval``) PnL samples
go once per ``flush_interval``. Each flush is one transaction, whatever the engine count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

from django.db import DatabaseError

from ..models import EngineError
from ..runtime import ACTIVE, EngineManager
from ..runtime.events import BookChanged, ErrorRaised, Event, RestartScheduled, StatusChanged
from ..runtime.ratelimit import LogLimiter
from . import store
from .leases import Leases
from .store import db

log = logging.getLogger("levipanel.runner")

# A fill waits at most this long (plus one loop turn) for a write to ride along with.
FILL_DELAY = 0.5
REFRESH_FLUSHES = 60  # each row is written whole at least once per this many flushes
FLUSH_LOG = 600  # heartbeat flushes kept in ``Writer.flush_log``
STEP_SLACK = 0.5  # seconds a beat may be late and its engine still in step with the flushes


class Writer:
    """Drain the manager's events and flush them with heartbeats, one transaction a flush.
    Every write is fenced by the runner's leases, and a heartbeat flush renews them. A
    database error keeps everything pending and backs off (0.5 s doubling, to at most a
    quarter of the lease, so a database back in time still renews it)."""

    def __init__(
        self,
        manager: EngineManager,
        *,
        ids: Mapping[str, int],
        leases: Leases,
        started_at: float,
        flush_interval: float,
        pnl_interval: float,
        clock: Callable[[], float],
        on_lost: Callable[[set[int], str], None] = lambda ids, why: None,
        on_conflict: Callable[[int, str], None] = lambda engine_id, why: None,
    ) -> None:
        self.manager = manager
        self.ids = ids  # symbol -> engine id, kept up to date by the reconciler
        self.leases = leases
        self.on_lost = on_lost  # engines this runner may no longer run, and why
        self.on_conflict = on_conflict  # an engine whose fills clash with stored ones
        self.started_at = started_at
        self.flush_interval = flush_interval
        self.pnl_interval = pnl_interval  # <= 0: no PnL samples
        self.clock = clock
        self.write_transactions = 0
        self.heartbeat_due = 0.0
        self._pnl_due = 0.0
        self._pending: list[Event] = []
        self._acks: list[store.Ack] = []
        self._flushed: dict[str, float] = {}  # symbol -> last heartbeat in the database
        self._flushing: dict[str, float] = {}
        # (engine id, lease epoch) -> the row's values as this runner last wrote them, and the
        # flush that wrote them whole. A new lease starts afresh: someone else wrote meanwhile.
        self._values: dict[tuple[int, int], tuple[tuple, int]] = {}
        self._flushing_values: dict[tuple[int, int], tuple[tuple, int]] = {}
        self._flushes = 0
        # Engine id -> its last beat seen at a flush, for the engines stored in step with
        # this runner's flushes (``HeartbeatRow.in_step``): their beats are ``beats_since``.
        self._in_step: dict[int, float] = {}
        self._stepping: dict[int, float | None] = {}  # this write's changes (None: out)
        self._beats_since: float | None = None
        # The last ``beats_since`` written: one written later is never earlier (an engine
        # comes into step only with a beat and a tick at or after it), so a reader that
        # reads the runners' rows before the engines' never pairs a row in step with a
        # ``beats_since`` later than that engine's beat.
        self._beats_floor: float | None = None
        self._unstep: set[int] = set()  # engines this write takes out of step by owner
        self._gone: set[int] = set()  # engines in step the manager no longer tracks
        self._flushing_runner = False  # this write carries the runner's row
        self._runner_written = False  # the first flush takes rows left in step out of it
        # The last heartbeat flushes: (seconds in the database, whether it renewed the
        # leases, engine rows it wrote). Read by the benchmark.
        self.flush_log: deque[tuple[float, bool, int]] = deque(maxlen=FLUSH_LOG)
        self._retry_at = 0.0
        self._failures = 0
        self._log_limiter = LogLimiter(limit=1, window=10.0)  # an outage: a line per 10 s
        self._release: set[int] = set()
        self.released: asyncio.Event = asyncio.Event()  # set after a release committed
        self.stopped = False  # the final flush: the runner stops, its heartbeat says so

    def ack(self, ack: store.Ack) -> None:
        """Queue a command's acknowledgement for the next write."""
        self._acks.append(ack)
        self.manager.changed.set()

    def release(self, engine_ids: set[int]) -> None:
        """Give these engines' leases up in the next write, after their last rows."""
        self._release |= engine_ids
        self.manager.changed.set()

    async def flush(self) -> bool:
        """Write pending events now, and heartbeats when due. False on a database error."""
        now = self.clock()
        self._pending.extend(self.manager.drain_events())
        urgent = bool(self._acks or self._release) or any(map(_urgent, self._pending))
        # Only fills and survived errors pending: the oldest is first.
        fills_due = bool(self._pending) and now - self._pending[0].at >= FILL_DELAY
        heartbeat_due = now >= self.heartbeat_due or fills_due  # one transaction carries both
        if not (urgent or heartbeat_due):
            return True
        if now < self._retry_at:
            return False
        if not await self._write(now, heartbeat_due):
            return False
        if heartbeat_due:
            self.heartbeat_due = now + self.flush_interval
        return True

    async def flush_final(self, attempts: int = 3) -> None:
        """Write everything, heartbeats included, and give every lease up: the final state
        must reach the database, and the engines go to the other runners at once."""
        self.heartbeat_due = 0.0
        self.stopped = True
        self._release |= set(self.leases.epochs)
        for _ in range(attempts):
            self._retry_at = 0.0  # no backoff left over from earlier errors: try now
            if await self.flush():
                return
            await asyncio.sleep(0.5)

    async def database_error(self, exc: DatabaseError) -> None:
        """Engines keep running; writes wait and are retried with backoff."""
        self._failures += 1
        delay = min(30.0, self.leases.lease / 4, 0.5 * 2 ** (self._failures - 1))
        self._retry_at = self.clock() + delay
        self._log_limiter.log(
            log,
            logging.WARNING,
            "database",
            "database error (%s), writes retried from %.1fs on: %s",
            type(exc).__name__,
            delay,
            exc,
        )
        await db(store.close_connection)()

    def database_back(self) -> None:
        """The database answered (a poll went through): write at the next turn, not after
        the backoff that earlier errors set, so the leases are renewed in time."""
        self._retry_at = 0.0
        self._failures = 0

    async def _write(self, now: float, heartbeat_due: bool) -> bool:
        statuses, errors, restarts, books = self._rows(self._pending)
        acks = list(self._acks)
        self._flushing.clear()
        self._flushing_values.clear()
        self._stepping = {row.id: None for row in statuses}  # a status takes it out of step
        self._flushing_runner = heartbeat_due
        if heartbeat_due and not self._runner_written:
            self._in_step.clear()  # the first flush takes every row out of step first
        # A status or a fill writes some of the same columns its own way: write those rows whole.
        self._forget({row.id for row in statuses} | {row.id for row in books})
        self._gone = set()
        heartbeats = self._heartbeat_rows(now) if heartbeat_due else []
        # In step and out now with no row of its own to say so: no longer tracked, or no
        # longer held at its epoch (the runner fenced itself, say: the fence drops its
        # rows). Taken out of step by owner, the beat and tick it showed stored.
        epochs, in_step, gone = self.leases.epochs, self._in_step, self._gone
        self._unstep = {
            engine_id
            for engine_id, beat in self._stepping.items()
            if beat is None
            and engine_id in in_step
            and (engine_id in gone or engine_id not in epochs)
        }
        samples = self._pnl_rows(now) if heartbeat_due else []
        release = frozenset(self._release)
        fence = store.Fence(
            self.leases.runner,
            dict(self.leases.epochs),
            # Due by time, whatever the write carries: a start-up that claimed and started
            # a large fleet renews in its first write after.
            lease=self.leases.lease if self.leases.renewal_due() else None,
            release=release,
        )
        began = time.monotonic()
        call = asyncio.ensure_future(
            db(store.write)(
                statuses=statuses,
                errors=errors,
                restarts=restarts,
                heartbeats=heartbeats,
                acks=acks,
                books=books,
                runner=self._runner_row() if heartbeat_due else None,
                pnl_samples=samples,
                fence=fence,
                unstep=frozenset(self._unstep),
            )
        )
        try:
            written = await asyncio.shield(call)
        except asyncio.CancelledError:
            # The write goes on in its thread: learn how it ended before giving up, so
            # that the final flush neither repeats it nor loses it.
            with contextlib.suppress(DatabaseError):
                self._sent(await call, now, began, fence, acks, release, samples)
                self._runner_written |= heartbeat_due
            raise
        except DatabaseError as exc:
            await self.database_error(exc)
            return False
        if heartbeat_due or any((statuses, errors, restarts, acks, books, samples, release)):
            self.write_transactions += 1
        self._runner_written |= heartbeat_due
        if heartbeat_due:
            self.flush_log.append((written.seconds, fence.lease is not None, len(heartbeats)))
        self._sent(written, now, began, fence, acks, release, samples)
        return True

    def _sent(
        self,
        written: store.Written,
        now: float,
        began: float,
        fence: store.Fence,
        acks: list[store.Ack],
        release: frozenset[int],
        samples: list[store.PnlSampleRow],
    ) -> None:
        """A write committed: forget what it carried, and act on what it could not do."""
        if fence.lease is not None:
            self.leases.renewed(began)
        self._pending.clear()
        del self._acks[: len(acks)]  # acks queued during the write wait for the next one
        self._release -= release
        self._values.update(self._flushing_values)
        if self._flushing_runner and self._beats_since is not None:
            self._beats_floor = self._beats_since
        for engine_id, beat in self._stepping.items():
            if beat is None:
                self._in_step.pop(engine_id, None)
            else:
                self._in_step[engine_id] = beat
        gone = release | written.lost | set(written.conflicts)
        for engine_id in gone:  # taken out of step by the release, or by their new holder
            self._in_step.pop(engine_id, None)
        self._forget(gone)
        for engine_id in release:
            self.leases.drop(engine_id)
        if release:
            self.released.set()
        if written.lost:
            self.on_lost(written.lost, "its lease is another runner's now")
        for engine_id, why in written.conflicts.items():
            self.on_conflict(engine_id, f"fill conflict: {why}")
        self._flushed.update(self._flushing)
        self._failures = 0
        if samples:
            self._pnl_due = now + self.pnl_interval

    def _rows(self, events: list[Event]) -> tuple[list, list, list, list]:
        latest: dict[str, StatusChanged] = {}
        errors, restarts, books = [], [], []
        repeats: dict[tuple[int, str], EngineError] = {}  # survived errors, one per kind
        for event in events:
            engine_id = self.ids.get(event.symbol)
            if engine_id is None:
                continue
            if isinstance(event, StatusChanged):
                latest[event.symbol] = event  # the row gets the newest status only
            elif isinstance(event, ErrorRaised) and not event.crashed:
                row = repeats.get((engine_id, event.type))
                if row is None:
                    repeats[engine_id, event.type] = store.error_row(engine_id, event)
                else:
                    store.repeat(row, event)
            elif isinstance(event, ErrorRaised):
                errors.append(store.error_row(engine_id, event))
            elif isinstance(event, RestartScheduled):
                restarts.append(store.restart_row(engine_id, event))
            elif isinstance(event, BookChanged):
                books.append(store.BookRow(engine_id, event))
        statuses = [self._status_row(event) for event in latest.values()]
        return statuses, errors + list(repeats.values()), restarts, books

    def _status_row(self, event: StatusChanged) -> store.StatusRow:
        engine = self.manager.engine_of(event.symbol)
        state = engine.state if engine else None
        started_at = engine.started_at if engine and event.status in ACTIVE else None
        return store.StatusRow(
            id=self.ids[event.symbol],
            last_heartbeat=engine.last_heartbeat if engine else None,
            last_tick_at=state.last_tick_at if state else None,
            status=event.status,
            reason=event.reason,
            changed_at=event.at,
            started_at=started_at,
            attempt=event.attempt,
            budget_left=event.budget_left,
            next_retry_at=event.next_retry_at,
            error_count=state.error_count if state else 0,
            last_error=state.last_error if state else None,
            code=event.code,
        )

    def _runner_row(self) -> store.RunnerRow:
        identity = self.leases.identity
        return store.RunnerRow(
            identity.name,
            self.started_at,
            self.manager.running_count(),
            self.manager.cycle_histogram.snapshot(),
            host=identity.host,
            pid=identity.pid,
            held=0 if self.stopped else len(self.leases),
            stopped=self.stopped,
            beats_since=self._beats_since,
            first=not self._runner_written,
        )

    def _heartbeat_rows(self, now: float) -> list[store.HeartbeatRow]:
        """Rows for the engines whose stored heartbeat must move (stopped ones too: their
        last cycles must reach the database).

        A running engine that cycles at least once a flush, and beat and got a price within
        ``flush_interval + cycle_interval + STEP_SLACK``, is in step with the flushes: its
        row is written when it comes into step, and then not for its beats and ticks at
        all — the runner's own row carries ``beats_since``, the oldest beat or tick of the
        engines in step.
        One that falls out of step (hung, stopped, gone) is written with its own last beat.
        So a flush of a quiet fleet writes only the rows due for their refresh (below).

        A row whose values are as last written is marked unchanged, and only its beat is
        written; a row not written whole for ``REFRESH_FLUSHES`` flushes is written whole
        again, whatever else wrote the columns."""
        rows = []
        self._flushes = flush = self._flushes + 1
        ids, flushed, values, epochs = self.ids, self._flushed, self._values, self.leases.epochs
        in_step, stepping, step_after = self._in_step, self._stepping, now - STEP_SLACK
        floor = self._beats_floor
        oldest: float | None = None
        seen: set[int] = set()
        for symbol, engine, running in self.manager.beats():
            engine_id = ids.get(symbol)
            beat = engine.last_heartbeat
            if engine_id is None or beat is None:
                continue
            seen.add(engine_id)
            cycle = engine.config.cycle_interval
            tick = engine.state.last_tick_at
            was = engine_id in in_step and engine_id not in stepping
            since = step_after - cycle - self.flush_interval
            now_in = (
                running
                and cycle <= self.flush_interval
                and beat >= since
                and tick is not None
                and tick >= since
            )
            if now_in:
                beat_or_tick = tick if tick < beat else beat
                if not was and floor is not None and beat_or_tick < floor:
                    now_in = False  # at its next beat: never behind what was vouched for
                else:
                    oldest = beat_or_tick if oldest is None or beat_or_tick < oldest else oldest
            if not now_in and not was and flushed.get(symbol) == beat:
                continue
            self._flushing[symbol] = beat
            state = engine.state
            attempt, budget = self._recovery_view(symbol, engine.started_at)
            # What the runner knows beyond the beat, compared between flushes.
            current = (
                state.error_count,
                state.last_error,
                state.position,
                state.daily_pnl,
                state.total_pnl,
                state.trade_count,
                attempt,
                budget,
            )
            key = (engine_id, epochs.get(engine_id, -1))
            last, whole_at = values.get(key, (None, 0))
            changed = last != current or flush - whole_at >= REFRESH_FLUSHES
            if not changed and was and now_in:  # in step, as stored: nothing to write
                in_step[engine_id] = beat
                continue
            if changed:  # the next refresh staggered by id: not the whole fleet's at once
                first = last is None
                self._flushing_values[key] = (current, flush - engine_id % REFRESH_FLUSHES * first)
            row = store.HeartbeatRow(
                engine_id,
                beat,
                *current[:6],
                state.last_tick_at,
                attempt,
                budget,
                changed=changed,
                in_step=now_in,
            )
            if was != now_in or engine_id in stepping:
                stepping[engine_id] = beat if now_in else None
            rows.append(row)
        self._gone = in_step.keys() - seen  # no longer tracked (removed, say): no row of its own
        for engine_id in self._gone:
            stepping[engine_id] = None
        self._beats_since = oldest
        return rows

    def _forget(self, engine_ids: set[int]) -> None:
        """Write these engines' rows whole at their next flush (an engine that changes hands
        comes back under a new epoch: a key of its own)."""
        epochs = self.leases.epochs
        for engine_id in engine_ids:
            self._values.pop((engine_id, epochs.get(engine_id, -1)), None)

    def _pnl_rows(self, now: float) -> list[store.PnlSampleRow]:
        """A PnL point for each running engine, once per ``pnl_interval``."""
        if self.pnl_interval <= 0 or now < self._pnl_due:
            return []
        return [
            store.PnlSampleRow(engine_id, engine.state.daily_pnl, engine.state.total_pnl)
            for engine in self.manager.running_engines()
            if (engine_id := self.ids.get(engine.symbol)) is not None
        ]

    def _recovery_view(self, symbol: str, started_at: float | None) -> tuple[int, int]:
        """Attempt n and the restarts left this hour, as they stand now."""
        policy = self.manager.policy
        if not policy.remembers(symbol):  # never failed, or forgiven: most of a fleet
            return 0, policy.settings.max_restarts_per_hour
        stable = (
            started_at is not None and self.clock() - started_at >= policy.settings.stable_after
        )
        return (0 if stable else policy.attempt(symbol)), policy.budget_left(symbol)


def _urgent(event: Event) -> bool:
    """Written at once: status changes, restarts, crashes. Fills and errors an engine survived
    ride along with the next write (a storm of them is not a storm of transactions)."""
    if isinstance(event, ErrorRaised):
        return event.crashed
    return not isinstance(event, BookChanged)
