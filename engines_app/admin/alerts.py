"""Read-only admin pages for alerts and incidents: written by tasks only, read by operators
(like django-q2's own task pages). Unlike the engines' logs, an operator may delete these
rows (old alerts)."""

from django.contrib import admin

from ..models import Alert, Incident
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
