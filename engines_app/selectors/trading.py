"""Reads of trades and profit, in the shapes freqtrade's users know."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, F, Q, Sum

from ..models import Engine, Trade
from ..services.engines import EngineNotFound
from .engines import epoch

MAX_PAGE_SIZE = 500


def trade_dict(trade: Trade) -> dict[str, Any]:
    return {
        "id": trade.fill_id,
        "seq": trade.seq,
        "symbol": trade.symbol,
        "side": trade.side,
        "qty": trade.qty,
        "price": trade.price,
        "fee": trade.fee,
        "time": epoch(trade.time),
        "realized_pnl": trade.realized_pnl,
        "position_after": trade.position_after,
    }


def trades_list(*, symbol: str, page: int = 1, page_size: int = 50) -> dict[str, Any]:
    """One engine's fills, newest first. Raises EngineNotFound and ValueError (bad page)."""
    if not isinstance(page, int) or page < 1:
        raise ValueError("page must be a whole number >= 1")
    if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be a whole number from 1 to {MAX_PAGE_SIZE}")
    engine_id = Engine.objects.filter(symbol=symbol).values_list("id", flat=True).first()
    if engine_id is None:
        raise EngineNotFound(symbol)
    trades = Trade.objects.filter(engine_id=engine_id).order_by("-seq")
    total = trades.count()
    start = (page - 1) * page_size
    # A page past the end is empty without a query: a huge OFFSET overflows the database's
    # integers (SQLite answers "datatype mismatch").
    page_rows = trades[start : start + page_size] if start < total else []
    return {
        "symbol": symbol,
        "page": page,
        "page_size": page_size,
        "total": total,
        "trades": [trade_dict(t) for t in page_rows],
    }


def profit_summary() -> dict[str, Any]:
    """Per engine and in total: realized (before fees), unrealized, fees, net total,
    trade count, win rate (closing fills that made money after their fee)."""
    stats = {
        row["engine_id"]: row
        for row in Trade.objects.values("engine_id").annotate(
            realized=Sum("realized_pnl"),
            fees=Sum("fee"),
            trades=Count("id"),
            closes=Count("id", filter=Q(realized_pnl__isnull=False)),
            wins=Count("id", filter=Q(realized_pnl__gt=F("fee"))),
        )
    }
    engines, totals = [], dict.fromkeys(("realized", "unrealized", "fees", "total_pnl"), 0.0)
    closes = wins = trades = 0
    for engine in Engine.objects.order_by("symbol").only("id", "symbol", "total_pnl"):
        row = stats.get(engine.id, {})
        realized, fees = row.get("realized") or 0.0, row.get("fees") or 0.0
        unrealized = engine.total_pnl - (realized - fees)
        item = _profit(engine.symbol, realized, unrealized, fees, row)
        engines.append(item)
        for key in totals:
            totals[key] += item[key]
        closes, wins = closes + row.get("closes", 0), wins + row.get("wins", 0)
        trades += row.get("trades", 0)
    total = {key: round(value, 8) for key, value in totals.items()}
    total |= {"trade_count": trades, "closed_count": closes, "win_rate": _rate(wins, closes)}
    return {"engines": engines, "total": total}


def _profit(symbol: str, realized: float, unrealized: float, fees: float, row) -> dict:
    closes, wins = row.get("closes", 0), row.get("wins", 0)
    return {
        "symbol": symbol,
        "realized": round(realized, 8),
        "unrealized": round(unrealized, 8),
        "fees": round(fees, 8),
        "total_pnl": round(realized - fees + unrealized, 8),
        "trade_count": row.get("trades", 0),
        "closed_count": closes,
        "win_rate": _rate(wins, closes),
    }


def _rate(wins: int, closes: int) -> float | None:
    return round(wins / closes, 4) if closes else None
