"""Writes. The admin, the API, the dashboard and the shell steer engines only through these:
each changes desired state or settings in the database and records a command in one
transaction; the runner carries the command out and acknowledges it."""

from __future__ import annotations

from types import EllipsisType
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..models import Engine, EngineCommand

Action = EngineCommand.Action


class EngineNotFound(LookupError):
    def __init__(self, symbol: str) -> None:
        super().__init__(f"no engine with symbol {symbol}")
        self.symbol = symbol


class EngineExists(ValueError):
    def __init__(self, symbol: str) -> None:
        super().__init__(f"an engine with symbol {symbol} exists already")
        self.symbol = symbol


def _engine_for_update(symbol: str) -> Engine:
    try:
        return Engine.objects.select_for_update().get(symbol=symbol)
    except Engine.DoesNotExist:
        raise EngineNotFound(symbol) from None


def _command(engine: Engine | None, symbol: str, action: str, user, source: str):
    return EngineCommand.objects.create(
        engine=engine, symbol=symbol, action=action, user=_user(user), source=source
    )


def _user(user):
    return user if user is not None and getattr(user, "is_authenticated", False) else None


@transaction.atomic
def engine_start(*, symbol: str, user=None, source: str = "shell") -> EngineCommand:
    """Want the engine running. A failed engine gets a fresh restart budget."""
    engine = _engine_for_update(symbol)
    fields = ["desired_state", "updated_at"]
    engine.desired_state = Engine.DesiredState.RUNNING
    if engine.status == Engine.Status.FAILED:
        engine.failures_reset_at = timezone.now()
        fields.append("failures_reset_at")
    engine.save(update_fields=fields)
    return _command(engine, symbol, Action.START, user, source)


@transaction.atomic
def engine_stop(*, symbol: str, user=None, source: str = "shell") -> EngineCommand:
    """Want the engine stopped; it finishes its current cycle first."""
    engine = _engine_for_update(symbol)
    engine.desired_state = Engine.DesiredState.STOPPED
    engine.save(update_fields=["desired_state", "updated_at"])
    return _command(engine, symbol, Action.STOP, user, source)


@transaction.atomic
def engine_restart(*, symbol: str, user=None, source: str = "shell") -> EngineCommand:
    """Restart the engine now, with a fresh restart budget; wants it running."""
    engine = _engine_for_update(symbol)
    engine.desired_state = Engine.DesiredState.RUNNING
    engine.failures_reset_at = timezone.now()
    engine.save(update_fields=["desired_state", "failures_reset_at", "updated_at"])
    return _command(engine, symbol, Action.RESTART, user, source)


@transaction.atomic
def engine_add(
    *,
    symbol: str,
    user=None,
    source: str = "shell",
    cycle_interval: float | None = None,
    config: dict[str, Any] | None = None,
    desired_state: str = Engine.DesiredState.RUNNING,
) -> EngineCommand:
    """Create an engine (validated like the admin form); the runner starts it if wanted.
    A live broker needs the switches (``exchanges.check_broker_change``)."""
    from .exchanges import check_broker_change

    if Engine.objects.filter(symbol=symbol).exists():
        raise EngineExists(symbol)
    check_broker_change({}, config, user)
    engine = Engine(
        symbol=symbol,
        cycle_interval=cycle_interval,
        config=config or {},
        desired_state=desired_state,
    )
    engine.full_clean()
    engine.save()
    return _command(engine, symbol, Action.ADD, user, source)


@transaction.atomic
def engine_configure(
    *,
    symbol: str,
    config: dict[str, Any] | None = None,
    cycle_interval: float | None | EllipsisType = ...,
    user=None,
    source: str = "shell",
) -> EngineCommand | None:
    """Change the engine's config and/or cycle interval (``None`` interval: the default;
    left out: unchanged), validated like the admin form; the runner restarts a running
    engine with them. A bad value raises ValidationError and changes nothing; an edit that
    changes nothing records no command and returns None. A change of broker or account
    is checked by the switches (``exchanges.check_broker_change``: LiveTradingRefused, and
    nothing changed) and recorded as ``set_broker``."""
    from .exchanges import check_broker_change

    engine = _engine_for_update(symbol)
    action = Action.CONFIGURE
    if config is not None and check_broker_change(engine.config, config, user):
        action = Action.SET_BROKER
    changed = []
    if config is not None and config != engine.config:
        engine.config = config
        changed.append("config")
    if cycle_interval is not ... and cycle_interval != engine.cycle_interval:
        engine.cycle_interval = cycle_interval
        changed.append("cycle_interval")
    if not changed:
        return None
    engine.full_clean()
    # Only what the operator owns: status, heartbeat and PnL stay the runner's.
    engine.save(update_fields=[*changed, "updated_at"])
    return _command(engine, symbol, action, user, source)


@transaction.atomic
def engine_remove(*, symbol: str, user=None, source: str = "shell") -> EngineCommand:
    """Delete an engine; the runner stops it. Its history goes with it."""
    engine = _engine_for_update(symbol)
    engine.delete()
    return _command(None, symbol, Action.REMOVE, user, source)


@transaction.atomic
def engine_daily_reset(*, user=None, source: str = "schedule") -> int:
    """Start a new UTC trading day on every engine: daily PnL counts from zero and engines
    halted by the daily loss limit run again. The runner owns the live numbers, so this
    records a command per engine for it to carry out; return how many."""
    engines = list(Engine.objects.values_list("id", "symbol"))
    user = _user(user)
    EngineCommand.objects.bulk_create(
        EngineCommand(
            engine_id=pk, symbol=symbol, action=Action.RESET_DAY, user=user, source=source
        )
        for pk, symbol in engines
    )
    return len(engines)
