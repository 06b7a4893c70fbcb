"""Reads for the live dashboard and the engine detail page."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.db.models import Q

from ..conf import engine_settings
from ..models import Engine, EngineCommand, EnginePnlSample
from ..runtime import ACTIVE
from ..runtime.redact import redact_text, redact_url
from .engines import STATUS_FIELDS, engine_status, epoch, runners_seen, status_counts, status_row
from .runners import runners_list

LOG_TAIL_LINES = 100
LOG_TAIL_BYTES = 256 * 1024


def engine_row(
    engine: Engine, now: float, seen: Mapping[str, float] | None = None
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
)


def page_row(values: Mapping[str, Any], now: float, seen: Mapping[str, float]) -> dict[str, Any]:
    """One engine as the dashboard shows it, from its ``STATUS_FIELDS`` values: only what
    changes what the page shows, so that a heartbeat alone changes nothing but ``stale``
    when it crosses ``STALE_AFTER`` (the page counts a fresh row's age from the frame's
    ``flushed_at``). PnL is rounded to the cent the page shows."""
    row = status_row(values, now, seen)
    started = values["started_at"]
    heartbeat = row["last_heartbeat"]
    return {
        "symbol": row["symbol"],
        "status": row["status"],
        "status_reason": row["status_reason"],
        "desired_state": row["desired_state"],
        "runner": row["runner"],
        # Only read when no live runner holds the engine: a live runner's moves every flush.
        "runner_last_seen": None if row["runner"] else row["runner_last_seen"],
        "started_at": epoch(started) if started and row["status"] in ACTIVE else None,
        "last_heartbeat": heartbeat,
        "stale": heartbeat is None or now - heartbeat > STALE_AFTER,
        "position": row["position"],
        "daily_pnl": round(row["daily_pnl"], 2),
        "total_pnl": round(row["total_pnl"], 2),
        "trade_count": row["trade_count"],
        "error_count": row["error_count"],
        "last_error": row["last_error"],
    }


def page_rows(
    rows: Any, now: float, seen: Mapping[str, float]
) -> tuple[dict[str, dict[str, Any]], dict[str, float], float | None]:
    """``rows`` (``values(*ROW_FIELDS)``) as page rows by symbol, their versions
    (``updated_at``) by symbol, and the newest version."""
    out, versions, newest = {}, {}, None
    for values in rows:
        symbol, version = values["symbol"], values["updated_at"].timestamp()
        out[symbol] = page_row(values, now, seen)
        versions[symbol] = version
        newest = version if newest is None or version > newest else newest
    return out, versions, newest


ROW_FIELDS = (*STATUS_FIELDS, "updated_at")


def fleet_rows(now: float) -> tuple[dict[str, dict[str, Any]], dict[str, float], float | None]:
    """Every engine as a page row (see ``page_rows``)."""
    return page_rows(Engine.objects.values(*ROW_FIELDS), now, runners_seen())


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
    now = time.time()
    if rows is None:
        by_symbol, _, flushed_at = fleet_rows(now)
        rows = list(by_symbol.values())
    return {
        "now": now,
        "flushed_at": flushed_at,
        "counts": status_counts(row["status"] for row in rows),
        "engines": rows,
        "commands": pending_commands(),
        "runners": runners_list(),
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


def pnl_chart(engine: Engine, *, width: int = 720, height: int = 200) -> dict[str, Any]:
    """The engine's sampled total PnL (and its current value) as SVG polyline points."""
    points = [
        (sample.at.timestamp(), sample.total_pnl)
        for sample in EnginePnlSample.objects.filter(engine=engine).order_by("-at")[:500]
    ][::-1]
    points.append((engine.updated_at.timestamp(), engine.total_pnl))
    (t0, t1), (v0, v1) = _span(p[0] for p in points), _span(p[1] for p in points)
    pad = 10

    def x(t: float) -> float:
        return round(pad + (t - t0) / (t1 - t0) * (width - 2 * pad), 1)

    def y(v: float) -> float:
        return round(height - pad - (v - v0) / (v1 - v0) * (height - 2 * pad), 1)

    return {
        "width": width,
        "height": height,
        "points": " ".join(f"{x(t)},{y(v)}" for t, v in points),
        "zero_y": y(0.0) if v0 <= 0 <= v1 else None,
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
