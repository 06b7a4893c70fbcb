"""Read-only admin page for the runners' heartbeats: written by runners only. An operator
may delete a retired runner's row."""

from __future__ import annotations

from django.contrib import admin

from ..models import RunnerHeartbeat
from ..selectors.runners import live_since, runner_live
from .base import ReadOnlyAdmin


@admin.register(RunnerHeartbeat)
class RunnerHeartbeatAdmin(ReadOnlyAdmin):
    allow_delete = True
    list_display = [
        "name",
        "live",
        "host",
        "pid",
        "held",
        "engines",
        "started_at",
        "last_seen",
        "stopped_at",
        "down_since",
    ]
    search_fields = ["name", "host"]
    exclude = ["cycle_histogram"]

    @admin.display(description="live", boolean=True)
    def live(self, runner: RunnerHeartbeat) -> bool:
        """Heart-beating within the lease, and not stopped on a signal."""
        return runner_live(runner, live_since())
