"""Reads of the runners: who hosts the engines, and whether each is still heart-beating."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from ..conf import engine_settings
from ..models import RunnerHeartbeat
from .engines import epoch


def live_since(now: datetime | None = None) -> datetime:
    """A runner seen after this is live (``RunnerHeartbeat.is_live``): a lease ago."""
    now = timezone.now() if now is None else now
    return now - timedelta(seconds=engine_settings().lease)


def runner_live(runner: RunnerHeartbeat, since: datetime) -> bool:
    return runner.is_live(since)


def runner_row(runner: RunnerHeartbeat, since: datetime) -> dict[str, Any]:
    return {
        "name": runner.name,
        "host": runner.host,
        "pid": runner.pid,
        "held": runner.held,
        "engines": runner.engines,
        "started_at": epoch(runner.started_at),
        "last_seen": epoch(runner.last_seen),
        "stopped_at": epoch(runner.stopped_at),
        "live": runner_live(runner, since),
    }


def runners_list() -> list[dict[str, Any]]:
    """Every runner that has written a heartbeat, by name."""
    since = live_since()
    return [
        runner_row(runner, since) for runner in RunnerHeartbeat.objects.defer("cycle_histogram")
    ]
