"""Paper broker: market orders fill at the feed's price, with slippage and a fee.

A ``Book`` is one engine's account for its symbol. Every number the status shows follows
from the fills applied to it, so replaying the stored fills rebuilds it exactly.
"""

from __future__ import annotations

import math
import os
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

DAY = 86400.0
EPSILON = 1e-9  # quantities closer to zero than this are flat (float noise after closes)

# Fill ids: random version-4 UUIDs from a generator seeded once from the system (and again
# in a forked child), not ``uuid.uuid4()``: its system call lets the interpreter lock go,
# and on a busy runner the event loop then waits for the lock behind the database thread.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def fill_id() -> str:
    return uuid.UUID(int=_ids.getrandbits(128), version=4).hex


BUY, SELL = "buy", "sell"


def utc_day(ts: float) -> int:
    """Days since the epoch in UTC: the daily PnL's calendar."""
    return int(ts // DAY)


@dataclass(frozen=True, slots=True)
class Fill:
    """One executed market order and the book right after it."""

    fill_id: str
    seq: int
    symbol: str
    side: str
    qty: float
    price: float
    fee: float
    at: float
    realized_pnl: float | None  # None for a fill that only opened or added
    position_after: float
    avg_price_after: float
    realized_total: float
    fees_total: float


class Book:
    """Position, average entry, realized PnL (before fees), fees, and where today's count
    starts."""

    __slots__ = (
        "qty",
        "avg_price",
        "realized",
        "fees",
        "trade_count",
        "wins",
        "closes",
        "mark",
        "day",
        "day_start",
        "loss_base",
    )

    def __init__(self) -> None:
        self.qty = 0.0
        self.avg_price = 0.0
        self.realized = 0.0
        self.fees = 0.0
        self.trade_count = 0
        self.wins = 0
        self.closes = 0
        self.mark: float | None = None
        self.day = 0
        # Total PnL when day ``day`` began, the open position marked at the price standing
        # then: daily PnL is the change since, so the days add up to the total.
        self.day_start = 0.0
        # Daily PnL at an operator's restart after a daily-loss halt: the limit counts anew.
        self.loss_base = 0.0

    def unrealized(self) -> float:
        if not self.qty or self.mark is None:
            return 0.0
        return (self.mark - self.avg_price) * self.qty

    def total_pnl(self) -> float:
        """Realized minus fees plus the open position marked at the last price."""
        return self.realized - self.fees + self.unrealized()

    def daily_pnl(self) -> float:
        """Today's (UTC) change of the total: today's fees off, the position (and what
        closing it realized) counted from its entry or the price standing at midnight,
        whichever is later. The days add up to the total."""
        return self.total_pnl() - self.day_start

    def roll_day(self, day: int) -> bool:
        """Start day ``day``'s count at the current mark; idempotent, so a scheduled reset
        and the engine's own midnight roll never reset twice."""
        if day <= self.day:
            return False
        self.day, self.day_start, self.loss_base = day, self.total_pnl(), 0.0
        return True

    def apply(self, side: str, qty: float, price: float, fee: float) -> float | None:
        """Book a fill; return the PnL it realized (None when it only opened or added)."""
        signed = qty if side == BUY else -qty
        old = self.qty
        realized = None
        if old == 0 or (old > 0) == (signed > 0):
            self.avg_price = (self.avg_price * abs(old) + price * qty) / (abs(old) + qty)
        else:
            closed = min(qty, abs(old))
            realized = (price - self.avg_price) * closed * math.copysign(1.0, old)
            self.realized += realized
            self.closes += 1
            self.wins += realized - fee > 0
            if qty > abs(old):
                self.avg_price = price  # flipped: the rest opened at this price
        self.qty = old + signed
        if abs(self.qty) < EPSILON:
            self.qty, self.avg_price = 0.0, 0.0
        self.fees += fee
        self.trade_count += 1
        self.mark = price
        return realized


def execute(
    book: Book,
    *,
    symbol: str,
    side: str,
    qty: float,
    price: float,
    at: float,
    fee_rate: float,
    slippage: float,
) -> Fill:
    """Fill a market order on the paper broker: the price moves against us by ``slippage``
    (a fraction), the fee is ``fee_rate`` of the filled notional."""
    fill_price = price * (1 + slippage) if side == BUY else price * (1 - slippage)
    fee = qty * fill_price * fee_rate
    return record(book, fill_id(), symbol, side, qty, fill_price, fee, at)


def record(
    book: Book,
    fill_id: str,
    symbol: str,
    side: str,
    qty: float,
    price: float,
    fee: float,
    at: float,
) -> Fill:
    """Book a fill made elsewhere (the paper broker, or an exchange's order)."""
    book.roll_day(utc_day(at))
    realized = book.apply(side, qty, price, fee)
    return Fill(
        fill_id=fill_id,
        seq=book.trade_count,
        symbol=symbol,
        side=side,
        qty=qty,
        price=price,
        fee=fee,
        at=at,
        realized_pnl=realized,
        position_after=book.qty,
        avg_price_after=book.avg_price,
        realized_total=book.realized,
        fees_total=book.fees,
    )


def replay(fills: Iterable[tuple[str, float, float, float, float]], *, today: int) -> Book:
    """Rebuild a book from stored fills ``(side, qty, price, fee, at)``, oldest first. Each
    day starts at the price of the fill before it (no other price is stored)."""
    book = Book()
    for side, qty, price, fee, at in fills:
        book.roll_day(utc_day(at))
        book.apply(side, qty, price, fee)
    book.roll_day(today)
    return book
