"""Read-only admin for trades: fills are written by the runner only."""

from django.contrib import admin

from ..models import Trade


@admin.register(Trade)
class TradeAdmin(admin.ModelAdmin):
    list_display = ("time", "symbol", "seq", "side", "qty", "price", "fee", "realized_pnl",
                    "position_after")  # fmt: skip
    list_filter = ("side", "symbol")
    search_fields = ("symbol", "fill_id")
    date_hierarchy = "time"
    ordering = ("-time", "-seq")
    list_select_related = ("engine",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
