"""Read-only admin pages for alerts, incidents and runner heartbeats: written by tasks and
runners only, read by operators (like django-q2's own task pages)."""

from django.contrib import admin

from ..models import Alert, Incident, RunnerHeartbeat


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "kind", "key", "outcome", "attempts", "error"]
    list_filter = ["outcome", "kind"]
    search_fields = ["key", "text"]
    date_hierarchy = "created_at"


@admin.register(Incident)
class IncidentAdmin(ReadOnlyAdmin):
    list_display = ["opened_at", "resolved_at", "symbols"]


@admin.register(RunnerHeartbeat)
class RunnerHeartbeatAdmin(ReadOnlyAdmin):
    list_display = ["name", "last_seen", "engines", "started_at", "down_since"]
