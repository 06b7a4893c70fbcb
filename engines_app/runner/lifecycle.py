"""The runner's lifecycle: start-up, the main loop, signals and shutdown.

The runner hosts the engine manager. A ``Reconciler`` moves the engines toward what the
database says operators want; a ``Writer`` batches what the engines did back into it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import TextIO

from django.conf import settings as django_settings
from django.db import DatabaseError, connection

from ..conf import EngineSettings, engine_settings
from ..runtime import EngineManager, HealthMonitor, RecoveryPolicy, brokers
from ..runtime.jsonlog import EngineLogs
from ..runtime.watchdog import LoopWatchdog
from . import store
from .leases import (
    Identity,
    Leases,
    RunnerRefused,
    fence_margin,
    hold_database,
    postgres_session_options,
)
from .reconciler import Reconciler
from .store import db
from .writer import Writer

__all__ = ["Runner", "RunnerFailed", "RunnerRefused", "db"]

log = logging.getLogger("levipanel.runner")


class RunnerFailed(Exception):
    """A task of the runner failed (logged with its traceback); the runner stopped."""


class Runner:
    """Run the engines of the database until asked to exit.

    After start-up three tasks run in one ``TaskGroup``: the main loop (poll every
    ``poll_interval``, write when there is something to write), the health monitor and the
    reconciler (commands, and the starts and stops it runs in the background). None of them
    is restarted: one that fails is logged with its traceback and ends the runner — its
    engines are stopped, their last state written, and ``run`` raises ``RunnerFailed``
    (``runengines`` exits 1). Starting the process again is the recovery: everything it
    needs is in the database. Engines are not in the group: one engine's crash is the
    manager's to handle and never touches its siblings.
    """

    def __init__(
        self,
        *,
        symbols: list[str] | None = None,
        settings: EngineSettings | None = None,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or engine_settings()
        self.symbols = symbols
        self.out = out
        self.clock = clock
        policy = RecoveryPolicy(self.settings.recovery(), clock=clock)
        self.manager = EngineManager(
            policy=policy,
            clock=clock,
            stop_timeout=self.settings.stop_timeout,
            strategy_workers=django_settings.LEVIPANEL_STRATEGY_WORKERS,
            watchdog=LoopWatchdog(warn_after=django_settings.LEVIPANEL_LOOP_LAG_WARN, clock=clock),
        )
        self.health = HealthMonitor(
            self.manager,
            check_interval=self.settings.health_check_interval,
            heartbeat_timeout=self.settings.heartbeat_timeout,
            clock=clock,
        )
        self.identity = Identity.of_this_process(django_settings.RUNNER_NAME)
        brokers.accounts = db(store.exchange_account)  # testnet and live engines' keys
        self.leases = Leases(
            self.identity,
            lease=self.settings.lease,
            margin=fence_margin(self.settings.lease, self.settings.poll_interval),
        )
        # SQLite: this runner holds the whole database (an OS lock refuses a second one).
        self.exclusive = connection.vendor == "sqlite"
        ids: dict[str, int] = {}
        self.writer = Writer(
            self.manager,
            ids=ids,
            leases=self.leases,
            started_at=clock(),
            flush_interval=self.settings.flush_interval,
            pnl_interval=django_settings.LEVIPANEL_PNL_SAMPLE_INTERVAL,
            clock=clock,
        )
        self.reconciler = Reconciler(
            self.manager,
            settings=self.settings,
            symbols=symbols,
            ids=ids,
            leases=self.leases,
            ack=self.writer.ack,
            release=self.writer.release,
            released=self.writer.released,
            say=self.say,
            clock=clock,
            exclusive=self.exclusive,
        )
        self.writer.on_lost = self.reconciler.lost
        self.writer.on_conflict = self.reconciler.conflicted
        self.should_exit = asyncio.Event()
        self.ready = asyncio.Event()
        self._unflushed = False  # lines said and not flushed yet (``say``)

    def request_exit(self) -> None:
        """First call: stop gracefully. Second call: stop now."""
        if self.should_exit.is_set():
            self.say("Second signal: stopping every engine now")
            self.manager.cancel_all()
        self.should_exit.set()

    async def run(self) -> None:
        """Start up, run until asked to exit, shut down. Raises ``RunnerFailed`` when one
        of the runner's tasks failed."""
        # A long-running process keeps its connection; close_old_connections() still
        # replaces it after an error (see ``store.db``).
        connection.settings_dict["CONN_MAX_AGE"] = None
        if connection.vendor == "postgresql":
            options = connection.settings_dict.get("OPTIONS", {})
            connection.settings_dict["OPTIONS"] = postgres_session_options(
                self.settings.lease, options
            )
        database = connection.settings_dict["NAME"] if self.exclusive else ""
        # No cyclic collection while the fleet starts (each would walk every engine made
        # so far): the reconciler freezes the started engines and turns it on again.
        collecting = self.reconciler.resume_collector = gc.isenabled()
        gc.disable()
        try:
            with hold_database(str(database), self.identity), EngineLogs(self.settings.log_dir):
                self.say(f"Starting LeviPanel engine runner {self.identity.name}...")
                if not await self._start_when_database_ready():
                    return
                try:
                    await self._serve()
                except ExceptionGroup as group:
                    log.error("A runner task failed: stopping the runner", exc_info=group)
                    raise RunnerFailed(_describe(group)) from group
                finally:
                    await self.shutdown()
        finally:
            if collecting:
                gc.enable()
            if self.out is not None:
                self._flush_out()

    async def _start_when_database_ready(self) -> bool:
        """Start up; a database that is unreachable or not migrated yet is waited for, not a
        crash. False when asked to exit while waiting."""
        delay = 0.5
        while True:
            try:
                await self._prepare_database()
                await self.writer.flush()  # its heartbeat first: peers count it before it claims
                await self.reconciler.load()
                await asyncio.sleep(0)  # the engines it started take their first step
                await self.writer.flush()
                return True
            except DatabaseError as exc:
                if len(self.manager):
                    raise  # engines started already: not a start-up problem
                self.say(f"Database not ready ({exc}); trying again in {delay:g}s")
                await db(store.close_connection)()
            try:
                await asyncio.wait_for(self.should_exit.wait(), delay)
                return False
            except TimeoutError:
                delay = min(delay * 2, 30.0)

    async def _prepare_database(self) -> None:
        identity = self.identity
        in_use = await db(store.runner_in_use)(
            identity.name, within=self.settings.lease, host=identity.host, pid=identity.pid
        )
        if in_use:
            raise RunnerRefused(in_use)
        if self.symbols:
            created = await db(store.ensure_engines)(self.symbols)
        else:
            created = await db(store.seed_engines)(self.settings.symbols)
        for symbol in created:
            self.say(f"Engine {symbol} created (desired running)")

    async def _serve(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            health = tasks.create_task(self.health.run(), name="health-monitor")
            watchdog = tasks.create_task(self.manager.watchdog.run(), name="loop-watchdog")
            reconciler = tasks.create_task(self.reconciler.run(), name="reconciler")
            fence = tasks.create_task(self.reconciler.fence(), name="self-fence")
            await asyncio.sleep(0)  # both take their first step: the reconciler takes jobs
            self.say(
                f"Health monitor started (interval={self.settings.health_check_interval}s, "
                f"heartbeat timeout={self.settings.heartbeat_timeout}s)"
            )
            self.say("LeviPanel engine runner ready")
            self.ready.set()
            try:
                await self._loop()
            finally:
                health.cancel()
                watchdog.cancel()
                reconciler.cancel()
                fence.cancel()

    async def _loop(self) -> None:
        poll_due = 0.0
        while not self.should_exit.is_set():
            await self._wait(min(poll_due, self.writer.heartbeat_due) - self.clock())
            if self.should_exit.is_set():
                break
            if self.clock() >= poll_due:
                try:
                    await self.reconciler.poll()
                    self.writer.database_back()
                except DatabaseError as exc:
                    await self.writer.database_error(exc)
                poll_due = self.clock() + self.settings.poll_interval
                # Engines the poll started take their first step before the flush: it
                # carries their running status, not a starting one and then another flush.
                await asyncio.sleep(0)
            await self.writer.flush()

    async def _wait(self, timeout: float) -> None:
        """Until something is to be written, the exit is asked for, or ``timeout``."""
        if timeout <= 0 or self.manager.changed.is_set():
            await asyncio.sleep(0.01)  # let a burst of changes coalesce
            return
        waiters = {
            asyncio.create_task(self.manager.changed.wait()),
            asyncio.create_task(self.should_exit.wait()),
        }
        _, pending = await asyncio.wait(
            waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in pending:
            waiter.cancel()
        if pending:
            await asyncio.wait(pending)

    async def shutdown(self) -> None:
        """Stop every engine (a failed or halted one stays so) and write the final state."""
        await self.manager.stop_all(reason="runner stopped", keep_failed=True)
        self.manager.close_pool()
        await self.writer.flush_final()
        self.say("LeviPanel engine runner stopped")

    def say(self, line: str) -> None:
        """A line for the operator: to ``out``, or the runner's log. The lines said in one
        turn of the event loop are flushed once, at the start of the next: a fleet starting
        says a line an engine, and a flush each was a system call each, with the loop
        waiting. With no loop running, at once."""
        if self.out is None:
            log.info(line)
            return
        self.out.write(line + "\n")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop running: at once
            self._unflushed = False
            self.out.flush()
            return
        if not self._unflushed:
            self._unflushed = True
            loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        if self._unflushed:
            self._unflushed = False
            self.out.flush()


def _describe(group: BaseExceptionGroup) -> str:
    """The first failure of a (nested) exception group, for the exit message."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return f"a runner task failed: {type(exc).__name__}: {exc}"
