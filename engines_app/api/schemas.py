"""Response shapes, in the Epic-1 guide's words; the OpenAPI schema is generated from them."""

from __future__ import annotations

from typing import Annotated, Any

from ninja import Schema
from pydantic import ConfigDict, Field, StrictBool


class EngineOut(Schema):
    symbol: str
    status: str
    uptime_seconds: float
    last_heartbeat: float | None
    error_count: int
    last_error: str | None
    position: float | None
    daily_pnl: float
    total_pnl: float
    trade_count: int
    desired_state: str
    status_reason: str | None
    heartbeat_age_seconds: float | None
    restart_attempt: int
    restart_budget_left: int | None
    next_retry_at: float | None
    cycle_interval: float | None
    last_tick_age_seconds: float | None = None
    runner: str | None = None
    runner_last_seen: float | None = None
    broker: str = "paper"  # paper, testnet or live
    exchange: str = ""  # the exchange of its feed and orders ("" on a simulated feed)


class FleetOut(Schema):
    total: int
    running: int
    crashed: int
    stopped: int
    starting: int
    backoff: int
    stopping: int
    failed: int
    degraded: int
    halted: int
    unknown: int
    matched: int
    page: int | None = None
    page_size: int | None = None
    engines: list[EngineOut]


class RunnerOut(Schema):
    name: str
    host: str
    pid: int | None
    held: int
    engines: int
    started_at: float
    last_seen: float
    stopped_at: float | None
    live: bool


class RunnersOut(Schema):
    runners: list[RunnerOut]


class CommandOut(Schema):
    symbol: str
    action: str
    command_id: int
    outcome: str
    desired_state: str
    status: str
    message: str


class KillSwitchIn(Schema):
    model_config = ConfigDict(extra="forbid")

    close_positions: StrictBool = False


class KillSwitchOut(Schema):
    id: int
    close_positions: bool
    symbols: list[str]
    message: str


class ErrorOut(Schema):
    detail: str


class ConfigureIn(Schema):
    """The engine's new config (replacing the old one whole) and, when given, its cycle
    interval (null: the default)."""

    config: dict[str, Any]
    cycle_interval: Annotated[float, Field(gt=0, le=86_400)] | None = None


class TradeOut(Schema):
    id: str
    seq: int
    symbol: str
    side: str
    qty: float
    price: float
    fee: float
    time: float
    realized_pnl: float | None
    position_after: float


class TradesOut(Schema):
    symbol: str
    page: int
    page_size: int
    total: int
    trades: list[TradeOut]


class ProfitTotalOut(Schema):
    realized: float
    unrealized: float
    fees: float
    total_pnl: float
    trade_count: int
    closed_count: int
    win_rate: float | None


class ProfitOut(ProfitTotalOut):
    symbol: str


class ProfitSummaryOut(Schema):
    engines: list[ProfitOut]
    total: ProfitTotalOut
