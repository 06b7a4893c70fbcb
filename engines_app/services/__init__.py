"""Every operator write (admin, API, dashboard, tasks, shell) goes through a service here:
the desired state or settings and an ``EngineCommand`` audit row change in one transaction."""

from .backtests import backtest_run
from .engines import (
    EngineExists,
    EngineNotFound,
    engine_add,
    engine_configure,
    engine_daily_reset,
    engine_remove,
    engine_restart,
    engine_start,
    engine_stop,
)

__all__ = [
    "backtest_run",
    "EngineExists",
    "EngineNotFound",
    "engine_add",
    "engine_configure",
    "engine_daily_reset",
    "engine_remove",
    "engine_restart",
    "engine_start",
    "engine_stop",
]
