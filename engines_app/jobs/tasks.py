"""django-q2 tasks. Interfaces only: each calls a service."""

from __future__ import annotations

import logging

from ..services import engines as services

log = logging.getLogger("levipanel.tasks")

DAILY_RESET = "engines_app.jobs.tasks.daily_reset"


def daily_reset() -> int:
    """Run at 00:00 UTC by the schedule ``ensure_daily_reset_schedule`` creates."""
    count = services.engine_daily_reset(source="schedule")
    log.info("daily reset requested engines=%d", count)
    return count
