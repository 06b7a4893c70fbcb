"""Read-only admin pages for alerts, incidents and runner heartbeats: written by tasks and
runners only, read by operators (like django-q2's own task pages). Unlike the engines' logs,
an operator may delete these rows (old alerts, a retired runner's heartbeat)."""

from django.contrib import admin

from ..models import Alert, Incident, RunnerHeartbeat
from .base import ReadOnlyAdmin


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    allow_delete = True
    list_display = ["created_at", "kind", "key", "outcome", "attempts", "error"]
    list_filter = ["outcome", "kind"]
    search_fields = ["key", "text"]
    date_hierarchy = "created_at"


@admin.register(Incident)
class IncidentAdmin(ReadOnlyAdmin):
    allow_delete = True
    list_display = ["opened_at", "resolved_at", "symbols"]


@admin.register(RunnerHeartbeat)
class RunnerHeartbeatAdmin(ReadOnlyAdmin):
    allow_delete = True
    list_display = ["name", "last_seen", "engines", "started_at", "down_since"]
