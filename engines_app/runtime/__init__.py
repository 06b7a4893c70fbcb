"""The engine runtime: plain asyncio, no Django import, testable and benchmarkable alone."""

from .engine import EngineConfig, TradingEngine
from .errors import ConfigError, FatalEngineError, HeartbeatTimeout, InjectedCrash
from .health import HealthMonitor
from .manager import ACTIVE, EngineManager, Status
from .recovery import RecoveryPolicy, RecoverySettings

__all__ = [
    "ACTIVE",
    "ConfigError",
    "EngineConfig",
    "EngineManager",
    "FatalEngineError",
    "HealthMonitor",
    "HeartbeatTimeout",
    "InjectedCrash",
    "RecoveryPolicy",
    "RecoverySettings",
    "Status",
    "TradingEngine",
]
