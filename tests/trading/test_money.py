"""Money in floats stays exact to the cent: the paper broker's running totals against an exact
recomputation of the same fills, over a long run of realistic BTCUSDT trading."""

from __future__ import annotations

import decimal
import random
from decimal import Decimal

from engines_app.runtime.broker import BUY, SELL, Book, execute, utc_day
from tests.helpers import T0

CENT = Decimal("0.01")
QUANTITIES = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0)


class ExactBook:
    """The broker's average-cost book in 60-digit decimals, fed the fills' own float values
    (each converted exactly): what the float totals would be without rounding."""

    def __init__(self) -> None:
        self.qty = self.avg = self.realized = self.fees = self.mark = Decimal(0)
        self.day, self.day_start = 0, Decimal(0)

    def total(self) -> Decimal:
        return self.realized - self.fees + (self.mark - self.avg) * self.qty

    def apply(self, side: str, qty: float, price: float, fee: float, at: float) -> None:
        if utc_day(at) > self.day:
            self.day, self.day_start = utc_day(at), self.total()
        q, p = Decimal(qty), Decimal(price)
        signed = q if side == BUY else -q
        if self.qty == 0 or (self.qty > 0) == (signed > 0):
            self.avg = (self.avg * abs(self.qty) + p * q) / (abs(self.qty) + q)
        else:
            closed = min(q, abs(self.qty))
            self.realized += (p - self.avg) * closed * (1 if self.qty > 0 else -1)
            if q > abs(self.qty):
                self.avg = p
        self.qty += signed
        if self.qty == 0:
            self.avg = Decimal(0)
        self.fees += Decimal(fee)
        self.mark = p


def run_fills(count: int, seed: int = 1) -> dict[str, Decimal]:
    """Trade ``count`` market orders through the real broker (``execute``) at 0.1 % fee and
    0.05 % slippage, a BTC-like price walking from 60,000 and a fill every 30 s (a
    million fills span a year of UTC days); return the largest error of each total."""
    rng = random.Random(seed)
    book, exact = Book(), ExactBook()
    price, errors = 60_000.0, dict.fromkeys(("realized", "fees", "total", "daily"), Decimal(0))
    with decimal.localcontext(prec=60):
        for n in range(count):
            price *= 1 + rng.uniform(-0.001, 0.001)
            # Mostly small orders both ways; a position past 5 BTC is worked back down.
            side = rng.choice((BUY, SELL)) if abs(book.qty) < 5 else (SELL if book.qty > 0 else BUY)
            fill = execute(
                book,
                symbol="BTCUSDT",
                side=side,
                qty=rng.choice(QUANTITIES),
                price=price,
                at=T0 + 30.0 * n,
                fee_rate=0.001,
                slippage=0.0005,
            )
            exact.apply(fill.side, fill.qty, fill.price, fill.fee, fill.at)
            if n % 997 == 0 or n == count - 1:  # the ledger's running totals, stored per fill
                _worst(errors, "realized", fill.realized_total, exact.realized)
                _worst(errors, "fees", fill.fees_total, exact.fees)
                _worst(errors, "total", book.total_pnl(), exact.total())
                _worst(errors, "daily", book.daily_pnl(), exact.total() - exact.day_start)
    return errors


def _worst(errors: dict[str, Decimal], name: str, value: float, exact: Decimal) -> None:
    errors[name] = max(errors[name], abs(Decimal(value) - exact))


def test_float_totals_stay_within_a_cent_of_exact_after_a_million_fills():
    errors = run_fills(1_000_000)
    assert max(errors.values()) < CENT, errors
