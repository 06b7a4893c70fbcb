"""The django-q2 schedules of alerts and retention, created after every ``migrate`` so they
exist without manual setup. Idempotent: an operator's later edits to them are kept."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

SCHEDULES = [
    # name, function, type, minutes
    ("levipanel: alerts check", "engines_app.alerts.rules.check_alerts", "I", 1),
    ("levipanel: retention", "engines_app.jobs.retention.run_retention", "D", None),
]


def ensure_schedules(*, using: str = DEFAULT_DB_ALIAS, **kwargs) -> None:
    """Create each schedule that does not exist yet (post_migrate receiver)."""
    from django_q.models import Schedule

    if Schedule._meta.db_table not in connections[using].introspection.table_names():
        return  # django_q is not migrated yet; the next migrate creates them
    now = timezone.now()
    for name, func, schedule_type, minutes in SCHEDULES:
        Schedule.objects.using(using).get_or_create(
            name=name,
            defaults={
                "func": func,
                "schedule_type": schedule_type,
                "minutes": minutes,
                "repeats": -1,
                "next_run": now + timedelta(minutes=1),
            },
        )
    ensure_daily_reset_schedule(using=using)


DAILY_RESET_NAME = "Daily PnL reset (00:00 UTC)"


def next_midnight(now: datetime | None = None) -> datetime:
    now = now or timezone.now()
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), UTC)


def ensure_daily_reset_schedule(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """The daily PnL reset at 00:00 UTC (DAILY keeps next_run on midnight; no croniter)."""
    from django_q.models import Schedule

    from .tasks import DAILY_RESET

    Schedule.objects.using(using).get_or_create(
        func=DAILY_RESET,
        defaults={
            "name": DAILY_RESET_NAME,
            "schedule_type": Schedule.DAILY,
            "next_run": next_midnight(),
            "repeats": -1,
        },
    )
