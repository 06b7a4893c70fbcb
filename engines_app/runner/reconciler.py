"""The reconciler: moves the engines this runner holds toward what operators want.

Operators change desired state and give commands through the services; every poll the
reconciler reads the pending commands and the control rows (commands first, so a command
never meets a row older than itself). A desired-state change starts or stops the engine in
the background; commands are carried out one at a time, in the order given, each exactly
once, and acknowledged through the writer. Every restart — an operator's restart, a new
config, a start after a stop — goes through ``EngineManager.restart``.

It also keeps this runner's share of the engines: it claims free or expired ones up to
``ceil(engines / live runners)``, hands its excess over (stop, then release, so an engine
never runs in two places), drops an engine whose lease it lost, and fences itself when it
could not renew its leases in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from ..conf import EngineSettings
from ..models import Engine
from ..runtime import EngineManager, Status
from ..runtime.broker import utc_day
from ..runtime.engine import EngineConfig, EngineState
from ..runtime.errors import ConfigError, FillConflict
from . import store
from .leases import Leases, fair_share
from .store import db

log = logging.getLogger("levipanel.runner")

RUNNING = Engine.DesiredState.RUNNING
# The most engines one claim takes (PostgreSQL, several runners): a claim is a transaction
# of its own, short next to a lease; a poll claims batch after batch (``_balance``).
CLAIM_BATCH = 1000
# Control rows are read at least this often (or a fifth of the lease, if shorter) even when
# no command was given: to see a joining runner, or a lease that expired.
FULL_READ = 0.5
SAFETY_READ = 60.0  # seconds: every control row is read at least this often
SETTLE_WAIT = 10.0  # seconds engines may take to start before they are frozen anyway


class Reconciler:
    """Carry out the desired state and the commands of the database on the manager."""

    def __init__(
        self,
        manager: EngineManager,
        *,
        settings: EngineSettings,
        symbols: list[str] | None,
        ids: dict[str, int],
        leases: Leases,
        ack: Callable[[store.Ack], None],
        release: Callable[[set[int]], None],
        released: asyncio.Event,
        say: Callable[[str], None],
        clock: Callable[[], float],
        exclusive: bool = False,
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.symbols = symbols  # None: every engine of the database
        self.ids = ids  # symbol -> engine id, shared with the writer
        self.leases = leases
        self.ack = ack
        self.release = release  # give leases up through the writer, after the last rows
        self.released = released
        self.say = say
        self.clock = clock
        self.exclusive = exclusive  # this runner holds the whole database (SQLite)
        self.control: dict[str, store.ControlRow] = {}
        self._commands: asyncio.Queue[store.CommandRow] = asyncio.Queue()
        self._queued: set[int] = set()  # commands queued, or carried out and not acked yet
        self._launched: dict[str, float] = {}  # symbol -> when it was last started
        self._handing_over: set[int] = set()
        self._jobs: asyncio.TaskGroup | None = None
        self._deferred: list[Coroutine[Any, Any, object]] = []
        self.polls = 0  # polls done: progress a watcher can wait on
        self._latest_command = -1  # the newest command when the rows were last read
        self._full_read_due = 0.0  # monotonic
        self._safety_read_due = 0.0
        self._summary: tuple = ()  # store.fleet_summary when the rows were last read
        self._claiming = False
        # Engines were started (monotonic, when): freeze them once they took their first
        # steps (``_settle``); None: nothing to freeze.
        self._freeze_due: float | None = None
        self.resume_collector = False  # the runner turned the collector off to start

    # Start-up ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Claim this runner's share of the engines and start those desired running that
        are not failed, nor halted today by a risk limit."""
        self.control = await db(store.control_rows)(self.symbols)
        self.ids.update({symbol: row.id for symbol, row in self.control.items()})
        live = await db(store.live_runners)(within=self.leases.lease)
        await self._claim(self._share(len(self.control), live))
        self._freeze_due = time.monotonic()  # even with nothing started: the collector runs

    async def _claim(self, limit: int) -> int:
        if not self.exclusive:
            # A few at a time: runners starting together each get a share, and no claim is a
            # transaction too long to renew in.
            limit = min(limit, CLAIM_BATCH)
        began = time.monotonic()
        claims = await db(store.claim_engines)(
            self.leases.runner,
            limit=limit,
            lease=self.leases.lease,
            symbols=self.symbols,
            exclusive=self.exclusive,
        )
        for claim in claims:
            self.leases.claimed(claim.id, claim.epoch, began)
        if claims:
            await self._take([claim.symbol for claim in claims])
        return len(claims)

    async def _take(self, symbols: list[str]) -> None:
        """Run the engines just claimed as their rows and history say."""
        now, policy = self.clock(), self.manager.policy
        # All of this runner's scope claimed (a start-up on SQLite): read it whole, not by
        # a list of every symbol.
        scope = self.symbols if len(symbols) >= len(self.control) else symbols
        claimed = set(symbols)
        rows = await db(store.control_rows)(scope)
        rows = {symbol: row for symbol, row in rows.items() if symbol in claimed}
        states = await db(store.load_states)(scope, now)
        history = await db(store.restart_history)(policy.settings.window, now)
        halted = await db(store.halted_on)(scope, now)
        started = wanted = 0
        for symbol, row in rows.items():
            self.control[symbol] = row
            self.ids[symbol] = row.id
            if symbol in history:
                policy.load(symbol, *history[symbol])
            status, state = states[symbol]
            if row.desired_state != RUNNING:
                changed = status != Status.STOPPED
                self.manager.adopt(EngineConfig(symbol), state, Status.STOPPED, "", emit=changed)
                continue
            wanted += 1
            if status == Status.FAILED:
                self.manager.adopt(EngineConfig(symbol), state, Status.FAILED, "", emit=False)
                self.say(f"Engine {symbol} is failed: restart it to run it again")
            elif symbol in halted and self._adopt_halted(row, state):
                self.say(f"Engine {symbol} is halted until the next UTC day or a restart")
            elif self._start(row, state):
                started += 1
                self.say(f"Engine {symbol} started")
        self.say(f"Started {started}/{wanted} engines")
        if started and self._freeze_due is None:
            self._freeze_due = time.monotonic()

    def _adopt_halted(self, row: store.ControlRow, state: EngineState) -> bool:
        """Keep an engine halted today by a risk limit halted, ready for the next day."""
        try:
            config = self._config(row)
        except ConfigError:
            return False  # the normal start fails it with its reason
        self.manager.adopt_halted(config, state, utc_day(self.clock()))
        return True

    # Polling ----------------------------------------------------------------------------

    async def poll(self) -> None:
        """Read commands and control rows and move the engines toward them; keep this
        runner's share. A database error is raised to the caller, which backs off.

        Every operator change records a command, so the control rows are read again only
        when a command was given since the last read, while claiming, when the fleet's
        summary moved (checked every ``FULL_READ`` seconds: a joining runner, an expired
        lease, an engine added or toggled outside the services), and every ``SAFETY_READ``
        seconds: a quiet poll costs two small queries whatever the fleet's size."""
        self._settle()
        runner = self.leases.runner
        latest = await db(store.latest_command_id)()
        commands = await db(store.pending_commands)(runner, self.symbols)
        full = latest != self._latest_command or self._claiming
        summary = None
        if not full and time.monotonic() >= self._full_read_due:
            summary, full = await self._fleet_moved()
        if full:
            await self._read_rows()
            self._latest_command = latest
            if summary is not None:  # only once read: a read that failed is tried again
                self._summary = summary
        self._queue(commands)
        for symbol in self.manager.resume_halted(self.clock()):
            self.say(f"Engine {symbol} resumed: a new UTC day")
        self.polls += 1

    def _settle(self) -> None:
        """Once the engines just started have taken their first steps: put them out of the
        cyclic collector's sight (``gc.freeze``), and let it collect again (the runner's
        start-up turns it off). They live as long as the runner, and a full collection
        walked all of them: 40-160 ms with the loop stopped, every second or so, at 10,000
        engines. What they allocate later, restarts included, is collected as usual; a
        frozen engine that goes (restarted, handed over) is freed by its reference counts
        alone, so what cycles it made stay: once for each engine started with the runner."""
        due = self._freeze_due
        if due is None:
            return
        # An engine that cannot start (say its exchange is out of reach) does not keep
        # the collector off for long.
        settled = not self._claiming and not self.manager.summary()["starting"]
        if settled or time.monotonic() - due >= SETTLE_WAIT:
            gc.collect()  # the start-up's garbage first: frozen, it would never go
            gc.freeze()
            if self.resume_collector:
                gc.enable()
            self._freeze_due = None

    async def _fleet_moved(self) -> tuple[tuple, bool]:
        """The fleet's summary now, and whether the rows must be read again."""
        now = time.monotonic()
        self._full_read_due = now + min(FULL_READ, self.leases.lease / 5)
        summary = await db(store.fleet_summary)(
            self.leases.runner, within=self.leases.lease, symbols=self.symbols
        )
        return summary, summary != self._summary or now >= self._safety_read_due

    async def _read_rows(self) -> None:
        """Read every control row: desired states, new and removed engines, leases."""
        now = time.monotonic()
        self._full_read_due = now + min(FULL_READ, self.leases.lease / 5)
        self._safety_read_due = now + SAFETY_READ
        rows = await db(store.control_rows)(self.symbols)
        live = await db(store.live_runners)(within=self.leases.lease)
        for symbol, row in rows.items():
            self.ids[symbol] = row.id
            if not self.leases.holds(row.id, row.lease_owner, row.lease_epoch):
                if row.id in self.leases.epochs:
                    self.lost({row.id}, "its lease is another runner's now")
                continue
            old = self.control.get(symbol)
            if old is None or old.desired_state != row.desired_state:
                self._apply(row)
        for symbol in set(self.control) - set(rows):
            if self.manager.status_of(symbol) is not None:
                self.say(f"Engine {symbol} removed")
                self._spawn(self.manager.remove(symbol))
            self.leases.drop(self.control[symbol].id)
            self.ids.pop(symbol, None)  # its last events have no row to go to
        self.control = rows
        self._claiming = await self._balance(rows, live)

    def _queue(self, commands: list[store.CommandRow]) -> None:
        """Queue the commands not queued yet; forget those carried out and acknowledged."""
        self._queued &= {command.id for command in commands}
        for command in commands:
            if command.id not in self._queued:
                self._queued.add(command.id)
                self._commands.put_nowait(command)

    def _share(self, engines: int, live: set[str]) -> int:
        if self.exclusive:
            return engines
        return fair_share(engines, len(live | {self.leases.runner}))

    async def _balance(self, rows: dict[str, store.ControlRow], live: set[str]) -> bool:
        """Claim up to this runner's fair share, or hand the excess over. True when it
        claimed: there may be more to claim at the next poll.

        Claims go a batch at a time, each its own short transaction, one after another
        while there is more to take, the live runners counted again before each: a runner
        that joined meanwhile lowers the share at once (a fleet no longer waits a poll per
        batch to start). For a fifth of a lease at most: the writer renews the leases
        between polls, and a runner that cannot renew fences itself."""
        share = self._share(len(rows), live)
        held = len(self.leases) - len(self._handing_over)
        if held < share:
            runner = self.leases.runner
            if any(
                not row.lease_live or (self.exclusive and row.lease_owner != runner)
                for row in rows.values()
            ):
                claimed, until = 0, time.monotonic() + self.leases.lease / 5
                while held < share:
                    got = await self._claim(share - held)
                    claimed, held = claimed + got, held + got
                    if got < CLAIM_BATCH or self.exclusive:  # nothing more free now
                        break
                    if time.monotonic() >= until:  # the writer's turn: renew, then go on
                        break
                    live = await db(store.live_runners)(within=self.leases.lease)
                    share = self._share(len(rows), live)
                return claimed > 0
        elif held > share and not self._handing_over:
            excess = sorted(self.leases.epochs)[share:]
            self._handing_over |= set(excess)
            self._spawn(self._hand_over(set(excess)))
        return False

    async def _hand_over(self, engine_ids: set[int]) -> None:
        """Stop these engines, then release them: a joining runner claims them."""
        symbols = [row.symbol for row in self.control.values() if row.id in engine_ids]
        self.say(f"Handing {len(symbols)} engines over to other runners")
        reason = "handed over to another runner"
        await asyncio.gather(*(self.manager.stop(symbol, reason=reason) for symbol in symbols))
        self.release(engine_ids)
        while engine_ids & set(self.leases.epochs):  # until released, or lost meanwhile
            self.released.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), self.settings.poll_interval)
        for symbol in symbols:
            await self.manager.abandon(symbol)
        self._handing_over -= engine_ids

    def lost(self, engine_ids: set[int], why: str) -> None:
        """Stop at once the engines whose lease this runner no longer holds; write nothing
        more for them."""
        for row in self.control.values():
            if row.id in engine_ids and row.id in self.leases.epochs:
                self.leases.drop(row.id)
                log.warning("Engine %s stopped here: %s", row.symbol, why)
                self.say(f"Engine {row.symbol} stopped here: {why}")
                self._spawn(self.manager.abandon(row.symbol))

    def conflicted(self, engine_id: int, why: str) -> None:
        """The engine's new fills clash with stored ones: stop it, record the error, give
        its lease up; whoever claims it next rebuilds its book from the stored fills."""
        symbol = next((r.symbol for r in self.control.values() if r.id == engine_id), None)
        if symbol is None:
            return
        self.say(f"Engine {symbol} stopped: {why}")
        self.manager.report_error(symbol, FillConflict(why))
        self._spawn(self.manager.abandon(symbol))
        self.release({engine_id})

    async def fence(self) -> None:
        """Stop every engine when the leases could expire before this runner renews them
        (paused, or cut off from the database): self-fencing, by the monotonic clock."""
        interval = self.settings.poll_interval
        while True:
            if self.leases.must_fence():
                held = set(self.leases.epochs)
                log.error(
                    "Could not renew the leases in time: stopping %d engines before another "
                    "runner may take them",
                    len(held),
                )
                self.lost(held, "its lease could not be renewed in time (self-fenced)")
            await asyncio.sleep(interval)

    def _mine(self, engine_id: int) -> bool:
        """Whether this runner holds the engine and is not handing it over."""
        return engine_id in self.leases.epochs and engine_id not in self._handing_over

    def _apply(self, row: store.ControlRow) -> None:
        """A new engine, or a desired state changed without a command (yet)."""
        if not self._mine(row.id):
            return
        status = self.manager.status_of(row.symbol)
        if row.desired_state != RUNNING:
            if status is None:
                self.manager.adopt(EngineConfig(row.symbol), None, Status.STOPPED, "")
            else:
                self._spawn(self.manager.stop(row.symbol, reason="stopped by operator", close=True))
        elif status in (None, Status.STOPPED, Status.FAILED, Status.STOPPING):
            self._spawn(self._restart(row, reset_budget=status == Status.FAILED))

    # Background work --------------------------------------------------------------------

    async def run(self) -> None:
        """Carry out commands, and own the background moves ``poll`` starts, until
        cancelled. A move that fails ends this (and so the runner), logged, never lost."""
        async with asyncio.TaskGroup() as jobs:
            self._jobs = jobs
            for job in self._deferred:
                jobs.create_task(job)
            self._deferred.clear()
            try:
                await self._work()
            finally:
                self._jobs = None

    def _spawn(self, job: Coroutine[Any, Any, object]) -> None:
        if self._jobs is None:  # before ``run`` (start-up): it takes them first
            self._deferred.append(job)
        else:
            self._jobs.create_task(job)

    async def _work(self) -> None:
        """Carry out operators' commands one at a time, in the order they were given."""
        while True:
            command = await self._commands.get()
            if command.engine_id is not None and not self._mine(command.engine_id):
                continue  # handed over or lost meanwhile: its new holder carries it out
            try:
                outcome, message = "done", await self._carry_out(command)
            except Exception as exc:  # a command must never take the runner down
                log.exception("command %s failed", command)
                outcome, message = "failed", f"{type(exc).__name__}: {exc}"
            ack = store.Ack(command.id, outcome, message, command.engine_id)
            self.ack(ack)
            self.say(f"Command {command.id} {command.action} {command.symbol}: {ack.message}")

    # Commands ---------------------------------------------------------------------------

    async def _carry_out(self, command: store.CommandRow) -> str:
        symbol, action = command.symbol, command.action
        row = self.control.get(symbol)
        if action == "remove" or row is None:
            await self.manager.remove(symbol)
            return "removed" if action == "remove" else "engine no longer exists"
        # The desired state in the row is at least as new as the command: a command it
        # contradicts was overtaken by a later one (given while the runner was down, or
        # within one poll), and carrying it out would only make the engine flap.
        if action == "stop":
            if row.desired_state == RUNNING:
                return "superseded: a later command wants it running"
            await self.manager.stop(symbol, reason="stopped by operator", close=True)
            return "stopped"
        if action in ("kill", "kill_close"):  # the kill switch: stopped whatever came after
            closing = action == "kill_close"
            await self.manager.stop(symbol, reason="kill switch", close=closing, force=closing)
            return "stopped by the kill switch" + (", position closed" if closing else "")
        if action == "reset_day":
            return self.manager.new_day(symbol, self.clock())
        if action in ("configure", "set_broker"):
            return await self._configure(row, command.created_at)
        if action == "restart":
            return await self._operator_restart(row, command.created_at)
        return await self._operator_start(row)  # start, add

    async def _operator_restart(self, row: store.ControlRow, given_at: float) -> str:
        if row.desired_state != RUNNING:
            return "superseded: a later command wants it stopped"
        if self._fresh_since(row.symbol, given_at):
            return "restarted: started after the command was given"
        self.manager.lift_halt(row.symbol)  # an operator overrides a halt
        return "restarted" if await self._restart(row) else "restart refused: bad config"

    async def _operator_start(self, row: store.ControlRow) -> str:
        self.manager.lift_halt(row.symbol)  # an operator overrides a halt
        if self.manager.is_alive(row.symbol):
            return "running"
        if row.desired_state != RUNNING:
            return "superseded: a later command wants it stopped"
        failed = self.manager.status_of(row.symbol) == Status.FAILED
        started = await self._restart(row, reset_budget=failed)
        return "started" if started else "start refused: bad config"

    async def _configure(self, row: store.ControlRow, given_at: float) -> str:
        """A new config or interval: a running engine restarts with the row's current one;
        any other keeps it for its next start."""
        if not self.manager.is_alive(row.symbol):
            try:
                self.manager.configure(self._config(row))
            except ConfigError:
                pass  # its next start fails it with the reason
            return "stored: engine not running"
        if row.desired_state != RUNNING:
            return "stored: a later command wants it stopped"
        if self._fresh_since(row.symbol, given_at):
            return "configured: started with it after the command was given"
        self.say(f"Engine {row.symbol} config changed: restarting it")
        restarted = await self._restart(row, reason="config changed", reset_budget=False)
        return "configured" if restarted else "configure refused: bad config"

    def _fresh_since(self, symbol: str, at: float) -> bool:
        """Whether the engine runs from a start made after ``at``: a restart asked for at
        ``at`` then has nothing left to do (the start that carried it out reset its budget)."""
        return self.manager.is_alive(symbol) and self._launched.get(symbol, 0.0) >= at

    # Starting ---------------------------------------------------------------------------

    async def _restart(
        self, row: store.ControlRow, *, reason: str = "restarting", reset_budget: bool = True
    ) -> bool:
        """(Re)start the engine with the row's config; False when that config is invalid
        (the engine is then stopped and failed with the reason) or the engine is no longer
        this runner's."""
        if self.manager.has_task(row.symbol):
            await self.manager.stop(row.symbol, reason=reason)
        # The newest row: a config given while the engine stopped is the one to start with.
        row = self.control.get(row.symbol, row)
        try:
            config = self._config(row)
        except ConfigError as exc:
            self._refuse(row, None, exc)
            return False
        if not self._mine(row.id):
            return False
        await self.manager.restart(row.symbol, config, reason=reason, reset_budget=reset_budget)
        if not self._mine(row.id):  # lost while it stopped: it must not run here
            await self.manager.abandon(row.symbol)
            return False
        self._launched[row.symbol] = self.clock()
        return True

    def _start(self, row: store.ControlRow, state: EngineState | None) -> bool:
        """Start an engine the manager does not run yet (the runner's start-up)."""
        try:
            config = self._config(row)
        except ConfigError as exc:
            self._refuse(row, state, exc)
            return False
        started = self.manager.start(config, state=state)
        if started:
            self._launched[row.symbol] = self.clock()
        return started

    def _config(self, row: store.ControlRow) -> EngineConfig:
        """The row's config, validated; raises ConfigError."""
        default_interval = self.settings.cycle_interval_for(row.symbol)
        config = EngineConfig.from_options(
            row.symbol, row.cycle_interval, row.config, default_interval=default_interval
        )
        config.validate()
        if config.broker != "paper":  # client order ids of its own (brokers.py)
            config = replace(config, order_tag=str(row.id))
        return config

    def _refuse(self, row: store.ControlRow, state: EngineState | None, exc: ConfigError) -> None:
        self.manager.adopt(EngineConfig(row.symbol), state, Status.FAILED, "")
        self.manager.fail(row.symbol, exc)
        self.say(f"Engine {row.symbol} not started: {exc}")
