"""Reads, in the shapes of the Epic-1 guide's API."""

from __future__ import annotations

import time
from typing import Any

from .models import Engine

STATUSES = [choice.value for choice in Engine.Status]


def _epoch(value) -> float | None:
    return None if value is None else round(value.timestamp(), 3)


def engine_status(engine: Engine, now: float | None = None) -> dict[str, Any]:
    """One engine as the guide shows it, plus what recovery and operators need to see."""
    now = time.time() if now is None else now
    running = engine.status in (
        Engine.Status.RUNNING,
        Engine.Status.DEGRADED,
        Engine.Status.STOPPING,
    )
    started = engine.started_at.timestamp() if engine.started_at and running else None
    heartbeat = _epoch(engine.last_heartbeat)
    return {
        "symbol": engine.symbol,
        "status": engine.status,
        "uptime_seconds": round(max(0.0, now - started), 2) if started else 0.0,
        "last_heartbeat": heartbeat,
        "error_count": engine.error_count,
        "last_error": engine.last_error or None,
        "position": engine.position,
        "daily_pnl": engine.daily_pnl,
        "total_pnl": engine.total_pnl,
        "trade_count": engine.trade_count,
        "desired_state": engine.desired_state,
        "status_reason": engine.status_reason or None,
        "heartbeat_age_seconds": round(now - heartbeat, 2) if heartbeat else None,
        "restart_attempt": engine.restart_attempt,
        "restart_budget_left": engine.restart_budget_left,
        "next_retry_at": _epoch(engine.next_retry_at),
        "cycle_interval": engine.cycle_interval,
        "last_tick_age_seconds": (
            round(max(0.0, now - engine.last_tick_at.timestamp()), 2)
            if engine.last_tick_at
            else None
        ),
    }


def fleet_status(engines=None) -> dict[str, Any]:
    """``{total, running, crashed, stopped, <other statuses>…, engines: [...]}``."""
    now = time.time()
    engines = list(Engine.objects.all() if engines is None else engines)
    counts = dict.fromkeys(STATUSES, 0)
    for engine in engines:
        counts[engine.status] = counts.get(engine.status, 0) + 1
    return {
        "total": len(engines),
        **counts,
        "engines": [engine_status(engine, now) for engine in engines],
    }
