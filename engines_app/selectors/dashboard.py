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
from .engines import engine_status, epoch, runners_seen, status_counts
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


def snapshot() -> dict[str, Any]:
    """Every engine, every command the runner has not acknowledged yet, every runner."""
    now, seen = time.time(), runners_seen()
    rows = [engine_row(engine, now, seen) for engine in Engine.objects.all()]
    pending = EngineCommand.objects.filter(acked_at=None).order_by("id")[:500]
    return {
        "now": now,
        "counts": status_counts(row["status"] for row in rows),
        "engines": rows,
        "commands": [command_row(command) for command in pending],
        "runners": runners_list(),
    }


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
