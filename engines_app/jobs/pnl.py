"""PnL history for the detail page's chart: the runner samples every engine's PnL."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction

from ..models import Engine, EnginePnlSample

log = logging.getLogger("levipanel.pnl")

KEEP = timedelta(days=7)
_last_sample = {"at": 0.0}


def sample_pnl(now: datetime | None = None) -> int:
    """Store the PnL of every running engine; drop samples older than ``KEEP``."""
    now = now or datetime.now(UTC)
    running = Engine.objects.filter(status__in=(Engine.Status.RUNNING, Engine.Status.DEGRADED))
    rows = [
        EnginePnlSample(engine_id=pk, at=now, daily_pnl=daily, total_pnl=total)
        for pk, daily, total in running.values_list("id", "daily_pnl", "total_pnl")
    ]
    with transaction.atomic():
        EnginePnlSample.objects.bulk_create(rows)
        EnginePnlSample.objects.filter(at__lt=now - KEEP).delete()
    return len(rows)


def on_engines_written(sender: Any, heartbeats: bool = False, **kwargs: Any) -> None:
    """Runner side: sample with the heartbeat flush, once per sample interval."""
    interval = settings.LEVIPANEL_PNL_SAMPLE_INTERVAL
    if not heartbeats or interval <= 0 or time.monotonic() - _last_sample["at"] < interval:
        return
    _last_sample["at"] = time.monotonic()
    try:
        sample_pnl()
    except DatabaseError as exc:  # a missed sample is a gap in a chart, nothing more
        log.warning("PnL sample not stored: %s", exc)

