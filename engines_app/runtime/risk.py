"""Risk checks, run before every order and after every fill."""

from __future__ import annotations

from dataclasses import dataclass

from .broker import Book

# The code of a halt on the daily loss limit (``RiskHalt.code``, ``StatusChanged.code``).
DAILY_LOSS = "daily_loss"
# A testnet or live order past an order or position limit: the engine halts.
ORDER_LIMIT = "order_limit"


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """Limits in the quote currency (USDT for BTCUSDT); None switches a check off."""

    max_position_notional: float | None = None
    max_order_notional: float | None = None
    daily_loss_limit: float | None = None


def order_problem(limits: RiskLimits, position: float, delta: float, price: float) -> str | None:
    """Why an order of ``delta`` units (signed) at ``price`` may not be sent, or None.

    Orders that only reduce the position are always allowed: risk checks must never keep
    an engine from getting out.
    """
    target = position + delta
    reduces = abs(target) <= abs(position) and (target == 0 or (target > 0) == (position > 0))
    if reduces:
        return None
    order_notional = abs(delta) * price
    if limits.max_order_notional is not None and order_notional > limits.max_order_notional:
        return (
            f"order of {order_notional:.2f} exceeds max_order_notional "
            f"{limits.max_order_notional:g}"
        )
    position_notional = abs(target) * price
    if limits.max_position_notional is not None and (
        position_notional > limits.max_position_notional
    ):
        return (
            f"position of {position_notional:.2f} would exceed max_position_notional "
            f"{limits.max_position_notional:g}"
        )
    return None


def daily_loss_reason(limits: RiskLimits, book: Book) -> str | None:
    """The halt reason once today's loss reaches the daily limit, else None."""
    limit = limits.daily_loss_limit
    if limit is None:
        return None
    loss = -(book.daily_pnl() - book.loss_base)
    if loss >= limit:
        return f"daily loss limit reached: lost {loss:.2f} today (limit {limit:g})"
    return None
