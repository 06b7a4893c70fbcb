"""Reads, in the shapes of the Epic-1 guide's API."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from django.db.models import Q
from django.db.models.fields.json import KT
from django.utils import timezone

from ..models import Engine, RunnerHeartbeat, shown_heartbeat
from ..runtime import ACTIVE
from ..runtime.brokers import PAPER
from .exchanges import broker_summary
from .prepared import Prepared

# Shown, never stored: an engine no live lease holds, whose last stored status (say
# ``running``) was written by a runner that may be gone.
UNKNOWN = "unknown"
STATUSES = [*(choice.value for choice in Engine.Status), UNKNOWN]
# Statuses that stay true with no runner: nothing runs an engine in them.
AT_REST = (Engine.Status.STOPPED.value, Engine.Status.FAILED.value)

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
    "lease_owner",
    "lease_expires_at",
    "beats_with_runner",
)


def epoch(value: datetime | None) -> float | None:
    """A moment as Unix seconds to the millisecond, as every read shows times; None stays."""
    return None if value is None else round(value.timestamp(), 3)


def lease_live(owner: str, expires_at: datetime | None, now: float) -> bool:
    """Whether a runner holds the engine now: an owner and a lease not expired."""
    return bool(owner) and expires_at is not None and expires_at.timestamp() > now


def shown_status(status: str, owner: str, expires_at: datetime | None, now: float) -> str:
    """The status to show: the stored one while a live lease holds the engine (or while it
    is at rest), else ``unknown`` — a dead runner's last word is not the truth."""
    if status in AT_REST or lease_live(owner, expires_at, now):
        return status
    return UNKNOWN


def unheld(now: datetime | None = None) -> Q:
    """Engines no live lease holds, as a filter."""
    now = timezone.now() if now is None else now
    return Q(lease_owner="") | Q(lease_expires_at=None) | Q(lease_expires_at__lte=now)


def with_shown_status(status: str, now: datetime | None = None) -> Q:
    """Engines ``shown_status`` shows as ``status``, as a filter (the admin's status filter)."""
    if status == UNKNOWN:
        return unheld(now) & ~Q(status__in=AT_REST)
    if status in AT_REST:
        return Q(status=status)
    return Q(status=status) & ~unheld(now)


class RunnerSeen(NamedTuple):
    """A runner's last heartbeat flush (Unix seconds), and the beat its engines in step
    show (``RunnerHeartbeat.beats_since``)."""

    at: float
    beats_since: datetime | None


_SEEN_FIELDS = ("name", "last_seen", "beats_since")
_RUNNERS_SEEN = Prepared(lambda: RunnerHeartbeat.objects.values(*_SEEN_FIELDS))


def runners_seen(names: Iterable[str] | None = None) -> dict[str, RunnerSeen]:
    """The runners ``names`` (default: every runner, a handful of rows), by name. Read them
    before the engines' rows they are shown with: a runner's ``beats_since`` only grows,
    and vouches for the engines in step as of its flush, so an older one shown with newer
    rows is never later than a beat (a newer one with older rows could be)."""
    if names is None:
        rows = _RUNNERS_SEEN.rows()
    else:
        rows = RunnerHeartbeat.objects.filter(name__in=list(names)).values(*_SEEN_FIELDS)
    return {r["name"]: RunnerSeen(r["last_seen"].timestamp(), r["beats_since"]) for r in rows}


def beating_runners(seen: Mapping[str, RunnerSeen], after: datetime) -> list[str]:
    """The runners whose engines in step beat after ``after``."""
    return [name for name, r in seen.items() if r.beats_since is not None and r.beats_since > after]


def beat_after(after: datetime, seen: Mapping[str, RunnerSeen]) -> Q:
    """Engines whose heartbeat (``shown_heartbeat``) is later than ``after``, as a filter."""
    found = Q(last_heartbeat__gt=after)
    if names := beating_runners(seen, after):
        found |= Q(beats_with_runner=True, lease_owner__in=names)
    return found


def status_counts(statuses: Iterable[str]) -> dict[str, int]:
    """``{total, <each status>: n}`` for the engines' statuses, every status listed."""
    counts = dict.fromkeys(STATUSES, 0)
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return {"total": sum(counts.values()), **counts}


# An engine's broker and exchange, read from its config by the database (``broker_summary``
# reads them the same way from a loaded row).
BROKER_FIELDS = {"broker": KT("config__broker"), "exchange": KT("config__feed_options__exchange")}
_ENGINE_STATUS = Prepared(
    lambda symbol: (
        Engine.objects.filter(symbol=symbol).order_by().values(*STATUS_FIELDS, **BROKER_FIELDS)[:1]
    )
)


def engine_status(
    engine: Engine, now: float | None = None, seen: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """One engine as the guide shows it, plus what recovery and operators need to see."""
    row = {field: getattr(engine, field) for field in STATUS_FIELDS}
    row.update(broker_summary(engine.config))
    if seen is None:
        seen = runners_seen([engine.lease_owner]) if engine.lease_owner else {}
    return status_row(row, now, seen)


def engine_status_of(symbol: str) -> dict[str, Any] | None:
    """``engine_status`` of the engine ``symbol`` (None if there is none), from its
    ``STATUS_FIELDS`` alone: the API's most frequent read. The runners first (a handful of
    rows), then the engine: see ``runners_seen``."""
    seen = runners_seen()
    rows = _ENGINE_STATUS.rows(symbol)
    return status_row(rows[0], None, seen) if rows else None


def status_row(
    row: dict[str, Any], now: float | None = None, seen: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The status of one engine from its ``STATUS_FIELDS`` values; ``seen`` maps runner
    names to what they last wrote (``runners_seen``)."""
    now = time.time() if now is None else now
    owner, expires = row["lease_owner"], row["lease_expires_at"]
    status = shown_status(row["status"], owner, expires, now)
    started = row["started_at"].timestamp() if row["started_at"] and status in ACTIVE else None
    runner = (seen or {}).get(owner) if owner else None
    beats_since, in_step = (runner.beats_since if runner else None), row["beats_with_runner"]
    heartbeat = epoch(shown_heartbeat(row["last_heartbeat"], in_step, beats_since))
    tick = shown_heartbeat(row["last_tick_at"], in_step, beats_since)
    last_seen = runner.at if runner else None
    return {
        "symbol": row["symbol"],
        "status": status,
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
        "runner": owner if lease_live(owner, expires, now) else None,
        "runner_last_seen": None if last_seen is None else round(last_seen, 3),
        "broker": row.get("broker") or PAPER,
        "exchange": row.get("exchange") or "",
    }


def fleet_status() -> dict[str, Any]:
    """``{total, running, crashed, stopped, <other statuses>…, engines: [...]}``."""
    now, seen = time.time(), runners_seen()
    rows = Engine.objects.values(*STATUS_FIELDS, **BROKER_FIELDS)
    engines = [status_row(row, now, seen) for row in rows]
    return {**status_counts(engine["status"] for engine in engines), "engines": engines}
