"""What the manager reports to whoever persists it (the runner's store)."""

from __future__ import annotations

from dataclasses import dataclass

from .broker import Fill


@dataclass(slots=True)
class StatusChanged:
    symbol: str
    status: str
    at: float
    reason: str = ""
    started_at: float | None = None
    attempt: int = 0
    next_retry_at: float | None = None
    budget_left: int | None = None
    # Why, for machines: alerts key on it, never on the wording of ``reason``.
    code: str = ""


@dataclass(slots=True)
class ErrorRaised:
    symbol: str
    at: float
    type: str
    message: str
    traceback: str
    fatal: bool
    crashed: bool


@dataclass(slots=True)
class RestartScheduled:
    symbol: str
    at: float
    reason: str
    attempt: int
    backoff: float


@dataclass(slots=True)
class BookChanged:
    """A fill, a new UTC day or an operator's lift of a daily-loss halt changed an engine's
    book. The runner's writer batches it: it rides along with the next write, or goes after
    ``FILL_DELAY``; the Trade row and the engine's position/PnL commit in one transaction.
    ``day``, ``day_start`` and ``loss_base`` (the book's) are stored so that a runner
    started again the same day counts the daily loss limit as this one did; ``day`` None
    leaves them as stored."""

    symbol: str
    at: float
    fill: Fill | None
    position: float | None
    daily_pnl: float
    total_pnl: float
    trade_count: int
    day: int | None = None
    day_start: float = 0.0
    loss_base: float = 0.0


Event = StatusChanged | ErrorRaised | RestartScheduled | BookChanged
