"""The reconciler: moves the engines toward what operators want.

Operators change desired state and give commands through the services; every poll the
reconciler reads the pending commands and the control rows (commands first, so a command
never meets a row older than itself). A desired-state change starts or stops the engine in
the background; commands are carried out one at a time, in the order given, each exactly
once, and acknowledged through the writer. Every restart — an operator's restart, a new
config, a start after a stop — goes through ``EngineManager.restart``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ..conf import EngineSettings
from ..models import Engine
from ..runtime import EngineManager, Status
from ..runtime.broker import utc_day
from ..runtime.engine import EngineConfig, EngineState
from ..runtime.errors import ConfigError
from . import store
from .store import db

log = logging.getLogger("levipanel.runner")

RUNNING = Engine.DesiredState.RUNNING


class Reconciler:
    """Carry out the desired state and the commands of the database on the manager."""

    def __init__(
        self,
        manager: EngineManager,
        *,
        settings: EngineSettings,
        symbols: list[str] | None,
        ids: dict[str, int],
        ack: Callable[[store.Ack], None],
        say: Callable[[str], None],
        clock: Callable[[], float],
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.symbols = symbols  # None: every engine of the database
        self.ids = ids  # symbol -> engine id, shared with the writer
        self.ack = ack
        self.say = say
        self.clock = clock
        self.control: dict[str, store.ControlRow] = {}
        self._commands: asyncio.Queue[store.CommandRow] = asyncio.Queue()
        self._last_command_id = 0
        self._launched: dict[str, float] = {}  # symbol -> when it was last started
        self._jobs: asyncio.TaskGroup | None = None

    # Start-up ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Load every engine; start those desired running that are not failed, nor halted
        today by a risk limit."""
        self.control = await db(store.control_rows)(self.symbols)
        self.ids.update({symbol: row.id for symbol, row in self.control.items()})
        now, policy = self.clock(), self.manager.policy
        states = await db(store.load_states)(list(self.control), now)
        history = await db(store.restart_history)(policy.settings.window, now)
        for symbol, (times, attempt) in history.items():
            policy.load(symbol, times, attempt)
        halted = await db(store.halted_on)(list(self.control), now)
        started = wanted = 0
        for symbol, row in self.control.items():
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
        """Read commands and control rows and move the engines toward them. A database
        error is raised to the caller, which backs off."""
        commands = await db(store.pending_commands)(self._last_command_id, self.symbols)
        rows = await db(store.control_rows)(self.symbols)
        for symbol, row in rows.items():
            self.ids[symbol] = row.id
            old = self.control.get(symbol)
            if old is None or old.desired_state != row.desired_state:
                self._apply(row)
        for symbol in set(self.control) - set(rows):
            self.say(f"Engine {symbol} removed")
            self._spawn(self.manager.remove(symbol))
        self.control = rows
        for command in commands:
            self._last_command_id = command.id
            self._commands.put_nowait(command)
        for symbol in self.manager.resume_halted(self.clock()):
            self.say(f"Engine {symbol} resumed: a new UTC day")

    def _apply(self, row: store.ControlRow) -> None:
        """A new engine, or a desired state changed without a command (yet)."""
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
            try:
                await self._work()
            finally:
                self._jobs = None

    def _spawn(self, job: Coroutine[Any, Any, object]) -> None:
        if self._jobs is None:
            job.close()
            raise RuntimeError("the reconciler is not running")
        self._jobs.create_task(job)

    async def _work(self) -> None:
        """Carry out operators' commands one at a time, in the order they were given."""
        while True:
            command = await self._commands.get()
            try:
                ack = store.Ack(command.id, "done", await self._carry_out(command))
            except Exception as exc:  # a command must never take the runner down
                log.exception("command %s failed", command)
                ack = store.Ack(command.id, "failed", f"{type(exc).__name__}: {exc}")
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
        if action == "reset_day":
            return self.manager.new_day(symbol, self.clock())
        if action == "configure":
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
        (the engine is then stopped and failed with the reason)."""
        try:
            config = self._config(row)
        except ConfigError as exc:
            await self.manager.stop(row.symbol, reason=reason)
            self._refuse(row, None, exc)
            return False
        await self.manager.restart(row.symbol, config, reason=reason, reset_budget=reset_budget)
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
        return config

    def _refuse(self, row: store.ControlRow, state: EngineState | None, exc: ConfigError) -> None:
        self.manager.adopt(EngineConfig(row.symbol), state, Status.FAILED, "")
        self.manager.fail(row.symbol, exc)
        self.say(f"Engine {row.symbol} not started: {exc}")
