"""django-q2 schedules that exist without anyone creating them by hand."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from .tasks import DAILY_RESET

DAILY_RESET_NAME = "Daily PnL reset (00:00 UTC)"


def next_midnight(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), UTC)


def ensure_daily_reset_schedule(*, using: str = "default", **kwargs) -> None:
    """post_migrate receiver: create the daily reset schedule once; keep operators' edits."""
    from django.db import connections
    from django_q.models import Schedule

    if Schedule._meta.db_table not in connections[using].introspection.table_names():
        return  # django_q is not migrated yet (a partial migrate)
    Schedule.objects.using(using).get_or_create(
        func=DAILY_RESET,
        defaults={
            "name": DAILY_RESET_NAME,
            "schedule_type": Schedule.DAILY,  # DAILY keeps next_run on 00:00; no croniter
            "next_run": next_midnight(),
            "repeats": -1,
        },
    )
