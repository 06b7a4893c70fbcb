"""Retention: the database and the log directory must not grow forever. A daily task
removes history older than ``RETENTION_DAYS`` and reports what it removed."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F
from django.utils import timezone

from ..models import (
    Alert,
    EngineCommand,
    EngineError,
    EnginePnlSample,
    EngineRestart,
    Incident,
    PrunedRestarts,
    RunnerHeartbeat,
)

log = logging.getLogger("levipanel.retention")

# engine-{SYMBOL}-{YYYYMMDD}.jsonl, the runner's per-symbol logs (runtime/jsonlog.py).
LOG_NAME = re.compile(r"^engine-.+-(\d{8})\.jsonl$")
# The PnL chart shows a week, whatever RETENTION_DAYS keeps of the rest.
PNL_SAMPLES_KEPT = timedelta(days=7)


def run_retention(days: int | None = None) -> dict[str, int]:
    """Delete restarts, errors, carried-out commands, alerts, resolved incidents, runner
    rows and log files older than ``days`` (default ``RETENTION_DAYS``), and PnL samples
    older than ``PNL_SAMPLES_KEPT``."""
    days = settings.RETENTION_DAYS if days is None else days
    if days < 1:
        raise ValueError("retention days must be at least 1")
    cutoff = timezone.now() - timedelta(days=days)
    with transaction.atomic():
        removed = {
            "restarts": _prune_restarts(cutoff),
            "errors": EngineError.objects.filter(at__lt=cutoff).delete()[0],
            # A pending command is still to be carried out: nothing is lost.
            "commands": EngineCommand.objects.filter(
                created_at__lt=cutoff, acked_at__isnull=False
            ).delete()[0],
            "alerts": Alert.objects.filter(created_at__lt=cutoff).delete()[0],
            "incidents": Incident.objects.filter(resolved_at__lt=cutoff).delete()[0],
            "runners": RunnerHeartbeat.objects.filter(last_seen__lt=cutoff).delete()[0],
            "pnl_samples": EnginePnlSample.objects.filter(
                at__lt=timezone.now() - PNL_SAMPLES_KEPT
            ).delete()[0],
        }
    removed["log_files"] = len(prune_logs(Path(settings.LEVIPANEL["LOG_DIR"]), cutoff))
    counts = " ".join(f"{key}={value}" for key, value in removed.items())
    log.info("retention (%d days) removed %s", days, counts)
    return removed


def _prune_restarts(cutoff: datetime) -> int:
    """Delete old restarts, adding them to each engine's pruned count first: the
    Prometheus restart counter is rows + pruned and must never go down."""
    old = EngineRestart.objects.filter(at__lt=cutoff)
    for row in old.values("engine_id").annotate(n=Count("id")):
        tally, _ = PrunedRestarts.objects.get_or_create(engine_id=row["engine_id"])
        PrunedRestarts.objects.filter(pk=tally.pk).update(count=F("count") + row["n"])
    return old.delete()[0]


def prune_logs(log_dir: Path, cutoff: datetime) -> list[Path]:
    """Delete the JSONL files of UTC days that ended before ``cutoff``."""
    if not log_dir.is_dir():
        return []
    removed = []
    for path in sorted(log_dir.glob("engine-*.jsonl")):
        match = LOG_NAME.match(path.name)
        if not match:
            continue
        try:
            day = datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC)
        except ValueError:
            continue
        if day + timedelta(days=1) <= cutoff:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
