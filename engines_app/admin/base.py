"""The one base for admin pages of rows that tasks, runners and services write: operators
read them and never add or edit one by hand."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest


class ReadOnlyAdmin(admin.ModelAdmin):
    """Read-only; ``allow_delete`` lets operators clear rows nothing depends on."""

    allow_delete = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return self.allow_delete and super().has_delete_permission(request, obj)
