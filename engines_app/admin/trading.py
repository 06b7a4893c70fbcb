"""Read-only admin for trades: fills are written by the runner only."""

from django.contrib import admin

from ..models import Trade
from .base import ReadOnlyAdmin


@admin.register(Trade)
class TradeAdmin(ReadOnlyAdmin):
    list_display = (
        "time",
        "symbol",
        "seq",
        "side",
        "qty",
        "price",
        "fee",
        "realized_pnl",
        "position_after",
    )
    list_filter = ("side", "symbol")
    search_fields = ("symbol", "fill_id")
    date_hierarchy = "time"
    ordering = ("-time", "-seq")
    list_select_related = ("engine",)
