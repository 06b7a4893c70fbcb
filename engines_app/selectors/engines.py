"""Reads, in the shapes of the Epic-1 guide's API."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ..models import Engine
from ..runtime import ACTIVE

STATUSES = [choice.value for choice in Engine.Status]

# The columns a status is made of: read as plain rows, 1,000 engines cost a few ms.
STATUS_FIELDS = (
    "symbol",
    "status",
    "started_at",
    "last_heartbeat",
    "error_count",
    "last_error",
    "position",
    "daily_pnl",
    "total_pnl",
    "trade_count",
    "desired_state",
    "status_reason",
    "restart_attempt",
    "restart_budget_left",
    "next_retry_at",
    "cycle_interval",
    "last_tick_at",
)


def epoch(value: datetime | None) -> float | None:
    """A moment as Unix seconds to the millisecond, as every read shows times; None stays."""
    return None if value is None else round(value.timestamp(), 3)


def status_counts(statuses: Iterable[str]) -> dict[str, int]:
    """``{total, <each status>: n}`` for the engines' statuses, every status listed."""
    counts = dict.fromkeys(STATUSES, 0)
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return {"total": sum(counts.values()), **counts}


def engine_status(engine: Engine, now: float | None = None) -> dict[str, Any]:
    """One engine as the guide shows it, plus what recovery and operators need to see."""
    return status_row({field: getattr(engine, field) for field in STATUS_FIELDS}, now)


def status_row(row: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The status of one engine from its ``STATUS_FIELDS`` values."""
    now = time.time() if now is None else now
    started = (
        row["started_at"].timestamp() if row["started_at"] and row["status"] in ACTIVE else None
    )
    heartbeat = epoch(row["last_heartbeat"])
    tick = row["last_tick_at"]
    return {
        "symbol": row["symbol"],
        "status": row["status"],
        "uptime_seconds": round(max(0.0, now - started), 2) if started else 0.0,
        "last_heartbeat": heartbeat,
        "error_count": row["error_count"],
        "last_error": row["last_error"] or None,
        "position": row["position"],
        "daily_pnl": row["daily_pnl"],
        "total_pnl": row["total_pnl"],
        "trade_count": row["trade_count"],
        "desired_state": row["desired_state"],
        "status_reason": row["status_reason"] or None,
        "heartbeat_age_seconds": round(now - heartbeat, 2) if heartbeat else None,
        "restart_attempt": row["restart_attempt"],
        "restart_budget_left": row["restart_budget_left"],
        "next_retry_at": epoch(row["next_retry_at"]),
        "cycle_interval": row["cycle_interval"],
        "last_tick_age_seconds": round(max(0.0, now - tick.timestamp()), 2) if tick else None,
    }


def fleet_status() -> dict[str, Any]:
    """``{total, running, crashed, stopped, <other statuses>…, engines: [...]}``."""
    now = time.time()
    engines = [status_row(row, now) for row in Engine.objects.values(*STATUS_FIELDS)]
    return {**status_counts(engine["status"] for engine in engines), "engines": engines}
