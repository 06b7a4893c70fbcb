"""Read-only admin for trades: fills are written by the runner only."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from ..models import Backtest, Trade
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


@admin.register(Backtest)
class BacktestAdmin(ReadOnlyAdmin):
    """Backtests are made by the command or an engine's "Backtest this config"; each has a
    page with its report and equity chart."""

    allow_delete = True
    list_display = (
        "id",
        "created_at",
        "symbol",
        "strategy",
        "interval",
        "candles",
        "total_pnl",
        "trade_count",
        "page",
    )
    list_filter = ("symbol", "strategy")
    search_fields = ("symbol", "strategy")
    date_hierarchy = "created_at"
    exclude = ("trades", "equity")

    @admin.display(description="total PnL")
    def total_pnl(self, backtest: Backtest) -> str:
        return f"{backtest.metrics.get('total_pnl', 0):.2f}"

    @admin.display(description="trades")
    def trade_count(self, backtest: Backtest) -> int:
        return backtest.metrics.get("trades", 0)

    @admin.display(description="report")
    def page(self, backtest: Backtest) -> str:
        return format_html(
            '<a href="{}">report and chart</a>', reverse("backtest", args=[backtest.pk])
        )
