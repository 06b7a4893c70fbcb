"""What the manager reports to whoever persists it (the runner's store)."""

from __future__ import annotations

from dataclasses import dataclass


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


Event = StatusChanged | ErrorRaised | RestartScheduled
