"""Reads for the live dashboard and the engine detail page."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.db import connection
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet, TextField
from django.db.models.functions import Cast

from ..conf import engine_settings
from ..models import Engine, EngineCommand, EnginePnlSample, shown_heartbeat
from ..runtime import ACTIVE
from ..runtime.brokers import PAPER
from ..runtime.redact import redact_text, redact_url
from .engines import (
    AT_REST,
    BROKER_FIELDS,
    UNKNOWN,
    RunnerSeen,
    beat_after,
    engine_status,
    epoch,
    runners_seen,
    status_counts,
)
from .runners import runners_list

LOG_TAIL_LINES = 100
LOG_TAIL_BYTES = 256 * 1024


def engine_row(
    engine: Engine, now: float, seen: Mapping[str, RunnerSeen] | None = None
) -> dict[str, Any]:
    """The guide's status of one engine, plus what the page needs to tick and to order
    updates: ``started_at`` and ``version`` (the row's ``updated_at``)."""
    row = engine_status(engine, now, seen)
    row["started_at"] = epoch(engine.started_at) if row["status"] in ACTIVE else None
    # Exact, not rounded: the broadcaster and the page compare versions.
    row["version"] = engine.updated_at.timestamp()
    return row


# A row's heartbeat is stale past this age (the page marks a running engine's age red): the
# push sends ``last_heartbeat`` when a row crosses it, not on every flush.
STALE_AFTER = 10.0
# What the dashboard shows of an engine: the push compares these and sends only the changed.
PAGE_FIELDS = (
    "symbol",
    "status",
    "status_reason",
    "desired_state",
    "runner",
    "runner_last_seen",
    "started_at",
    "last_heartbeat",
    "stale",
    "position",
    "daily_pnl",
    "total_pnl",
    "trade_count",
    "error_count",
    "last_error",
    "broker",
    "exchange",
)


# Read as the database returns them, times as text (no conversion of each value: a flush
# rewrites every running engine's row, and converting 10,000 rows costs a second), and two
# flags worked out by the database.
RAW_COLUMNS = (
    "symbol",
    "status",
    "status_reason",
    "desired_state",
    "lease_owner",
    "position",
    "daily_pnl",
    "total_pnl",
    "trade_count",
    "error_count",
    "last_error",
    "broker",  # from the config, by the database (``engines.BROKER_FIELDS``)
    "exchange",
)
RAW_TIMES = ("started_at", "last_heartbeat", "updated_at")
HEARTBEAT = len(RAW_COLUMNS) + 1
UPDATED = len(RAW_COLUMNS) + 2


def as_text(name: str) -> Cast:
    return Cast(name, output_field=TextField())


def fetch(rows: QuerySet) -> list[tuple]:
    """A ``values_list`` query's rows as the database driver returns them."""
    sql, params = rows.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def raw_rows(engines: QuerySet, now: datetime, seen: Mapping[str, RunnerSeen]) -> list[tuple]:
    """``RAW_COLUMNS`` and ``RAW_TIMES`` (as text) of ``engines``, whether each beats with
    its runner, then whether a live lease holds it and whether its heartbeat is fresh
    (within ``STALE_AFTER``) at ``now``; ``seen`` is ``runners_seen()``."""
    held = ExpressionWrapper(~Q(lease_owner="") & Q(lease_expires_at__gt=now), BooleanField())
    fresh = beat_after(now - timedelta(seconds=STALE_AFTER), seen)
    times = {f"{name}_text": as_text(name) for name in RAW_TIMES}
    rows = engines.annotate(**BROKER_FIELDS).annotate(
        **times, held=held, fresh=ExpressionWrapper(fresh, BooleanField())
    )
    return fetch(rows.values_list(*RAW_COLUMNS, *times, "beats_with_runner", "held", "fresh"))


def stamps(engines: QuerySet) -> list[tuple[str, str]]:
    """``(symbol, updated_at as text)`` of ``engines``: the versions to compare."""
    return fetch(engines.annotate(version=as_text("updated_at")).values_list("symbol", "version"))


def row_key(raw: tuple) -> tuple:
    """What of a raw row the page shows: a heartbeat alone (or the stamp) changes nothing."""
    return raw[:HEARTBEAT] + (bool(raw[-2]), bool(raw[-1]))


def raw_epoch(value: Any) -> float | None:
    """A raw datetime (SQLite's naive UTC, PostgreSQL's aware datetime) as Unix seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:  # SQLite stores UTC
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def page_row(raw: tuple, seen: Mapping[str, RunnerSeen]) -> dict[str, Any]:
    """One engine as the dashboard shows it (``PAGE_FIELDS``), from ``raw_rows``: only what
    changes what the page shows. Its status is ``shown_status``'s; ``stale`` says whether
    the heartbeat is older than ``STALE_AFTER`` (the page counts a fresh row's age from the
    frame's ``flushed_at``); PnL is rounded to the cent the page shows."""
    symbol, status, reason, desired, owner, position, daily, total, trades = raw[:9]
    errors, last_error, broker, exchange, started, heartbeat, _, in_step, held, fresh = raw[9:]
    shown = status if status in AT_REST or held else UNKNOWN
    runner = seen.get(owner) if owner else None
    last_seen = runner.at if runner and not held else None
    beats_since = runner.beats_since.timestamp() if runner and runner.beats_since else None
    beat = shown_heartbeat(raw_epoch(heartbeat), bool(in_step), beats_since)
    return {
        "symbol": symbol,
        "status": shown,
        "status_reason": reason or None,
        "desired_state": desired,
        "runner": owner if held else None,
        # Only when no live runner holds the engine: a live runner's moves every flush.
        "runner_last_seen": None if last_seen is None else round(last_seen, 3),
        "started_at": round(raw_epoch(started), 3) if started and shown in ACTIVE else None,
        "last_heartbeat": None if beat is None else round(beat, 3),
        "stale": not fresh,
        "position": position,
        "daily_pnl": round(daily, 2),
        "total_pnl": round(total, 2),
        "trade_count": trades,
        "error_count": errors,
        "last_error": last_error or None,
        "broker": broker or PAPER,
        "exchange": exchange or "",
    }


def fleet_rows(now: datetime) -> tuple[dict[str, dict[str, Any]], dict[str, tuple], dict[str, Any]]:
    """Every engine: its page row, its ``row_key`` and its raw ``updated_at``, by symbol."""
    seen = runners_seen()
    rows, keys, versions = {}, {}, {}
    for raw in raw_rows(Engine.objects.all(), now, seen):
        rows[raw[0]], keys[raw[0]], versions[raw[0]] = (
            page_row(raw, seen),
            row_key(raw),
            raw[UPDATED],
        )
    return rows, keys, versions


def last_flush(runners: list[dict[str, Any]]) -> float | None:
    """The newest heartbeat flush of a live runner (``runners_list`` rows), as Unix seconds:
    a beat alone does not stamp an engine's ``updated_at``, its runner's row says it."""
    return max((r["last_seen"] for r in runners if r["live"]), default=None)


def command_row(command: EngineCommand) -> dict[str, Any]:
    return {
        "id": command.pk,
        "symbol": command.symbol,
        "action": command.action,
        "source": command.source,
        "created_at": epoch(command.created_at),
        "acked_at": epoch(command.acked_at),
        "outcome": command.outcome,
        "message": command.message,
    }


def snapshot(
    rows: list[dict[str, Any]] | None = None, flushed_at: float | None = None
) -> dict[str, Any]:
    """Every engine as a page row (``rows`` when given: the broadcaster's, as last sent),
    every command the runner has not acknowledged yet, every runner."""
    now, runners = time.time(), runners_list()
    if rows is None:
        by_symbol, _, _ = fleet_rows(datetime.fromtimestamp(now, UTC))
        rows = [by_symbol[symbol] for symbol in sorted(by_symbol)]
        flushed_at = last_flush(runners)
    return {
        "now": now,
        "flushed_at": flushed_at,
        "counts": status_counts(row["status"] for row in rows),
        "engines": rows,
        "commands": pending_commands(),
        "runners": runners,
    }


def pending_commands() -> list[dict[str, Any]]:
    pending = EngineCommand.objects.filter(acked_at=None).order_by("id")[:500]
    return [command_row(command) for command in pending]


def changed_commands(since: datetime) -> list[EngineCommand]:
    """Commands given or acknowledged since ``since``."""
    rows = EngineCommand.objects.filter(Q(created_at__gte=since) | Q(acked_at__gte=since))
    return list(rows.order_by("id"))


def log_tail(symbol: str, lines: int = LOG_TAIL_LINES) -> list[dict[str, Any]]:
    """The last lines of the engine's newest JSONL log, parsed when they parse."""
    path = newest_log(engine_settings().log_dir, symbol)
    if path is None:
        return []
    with path.open("rb") as stream:
        stream.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
        tail = deque(stream.read().decode("utf-8", "replace").splitlines(), maxlen=lines)
    return [_log_line(line) for line in tail if line.strip()]


def newest_log(log_dir: Path, symbol: str) -> Path | None:
    # engine-{SYMBOL}-{YYYYMMDD}.jsonl: the names sort by day.
    files = sorted(Path(log_dir).glob(f"engine-{symbol}-*.jsonl"))
    return files[-1] if files else None


def _log_line(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        return {"ts": "", "level": "", "msg": redact_text(line)}
    if not isinstance(record, dict):
        return {"ts": "", "level": "", "msg": redact_text(line)}
    return {
        "ts": record.get("ts", ""),
        "level": record.get("level", ""),
        # Lines written before URLs were redacted may still quote a credential.
        "msg": redact_text(str(record.get("msg", line))),
    }


def feed_label(config: Mapping[str, Any] | Any) -> str:
    """The engine's feed as the page shows it: its kind, and its URL without credentials."""
    if not isinstance(config, Mapping):
        return "sim"
    kind = str(config.get("feed", "sim"))
    options = config.get("feed_options")
    url = options.get("url") if isinstance(options, Mapping) else None
    return f"{kind} {redact_url(url)}" if isinstance(url, str) else kind


def pnl_chart(engine: Engine) -> dict[str, Any]:
    """The engine's sampled total PnL (and its current value), as the page's chart reads
    it (``data``), with its span for the caption."""
    points = [
        (sample.at.timestamp(), sample.total_pnl)
        for sample in EnginePnlSample.objects.filter(engine=engine).order_by("-at")[:500]
    ][::-1]
    points.append((engine.updated_at.timestamp(), engine.total_pnl))
    (t0, t1), (v0, v1) = _span(p[0] for p in points), _span(p[1] for p in points)
    return {
        "data": {
            "series": [{"label": "total PnL", "points": [[t, v] for t, v in points]}],
            "unit": "",
        },
        "min": v0,
        "max": v1,
        "first_at": datetime.fromtimestamp(t0, UTC),
        "last_at": datetime.fromtimestamp(t1, UTC),
        "samples": len(points),
    }


def _span(values) -> tuple[float, float]:
    values = list(values)
    low, high = min(values), max(values)
    if high - low < 1e-9:
        return low - 1.0, high + 1.0
    return low, high
