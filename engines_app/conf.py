"""Engine settings, read from ``settings.LEVIPANEL`` when asked for, never at import time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from .runtime.engine import MAX_CYCLE, symbol_problem
from .runtime.recovery import RecoverySettings


@dataclass(frozen=True)
class EngineSettings:
    symbols: list[str]
    cycle_interval: float
    cycle_interval_overrides: dict[str, float]
    health_check_interval: float
    heartbeat_timeout: float
    max_restarts_per_hour: int
    backoff_base: float
    backoff_cap: float
    backoff_jitter: float
    stable_after: float
    flush_interval: float
    poll_interval: float
    stop_timeout: float
    log_dir: Path
    lease: float = 15.0
    restart_stagger_window: float = 10.0
    restart_stagger_step: float = 1.0

    def cycle_interval_for(self, symbol: str) -> float:
        return self.cycle_interval_overrides.get(symbol, self.cycle_interval)

    def recovery(self) -> RecoverySettings:
        return RecoverySettings(
            max_restarts_per_hour=self.max_restarts_per_hour,
            backoff_base=self.backoff_base,
            backoff_cap=self.backoff_cap,
            jitter=self.backoff_jitter,
            stable_after=self.stable_after,
            stagger_window=self.restart_stagger_window,
            stagger_step=self.restart_stagger_step,
        )


def engine_settings() -> EngineSettings:
    raw = settings.LEVIPANEL
    return EngineSettings(**{key.lower(): value for key, value in raw.items()})


def problems() -> list[str]:
    """Every invalid engine setting, as 'VARIABLE: what is wrong'."""
    found = [
        f"{name}: {' '.join(messages)}"
        for name, messages in getattr(settings, "LEVIPANEL_ENV_ERRORS", {}).items()
    ]
    raw = settings.LEVIPANEL
    for symbol in raw["SYMBOLS"] or []:
        if problem := symbol_problem(symbol):
            found.append(f"LEVIPANEL_SYMBOLS: {symbol!r}: {problem}")
    for symbol, interval in (raw["CYCLE_INTERVAL_OVERRIDES"] or {}).items():
        if problem := symbol_problem(symbol):
            found.append(f"LEVIPANEL_CYCLE_INTERVAL_OVERRIDES: {symbol!r}: {problem}")
        if interval is not None and not 0 < interval <= MAX_CYCLE:
            found.append(
                f"LEVIPANEL_CYCLE_INTERVAL_OVERRIDES: {symbol}: must be greater than 0 "
                f"and at most {MAX_CYCLE}"
            )
    if raw["LOG_DIR"] is not None and (problem := _dir_problem(Path(raw["LOG_DIR"]))):
        found.append(f"LEVIPANEL_LOG_DIR: {problem}")
    lease, flush, poll = raw["LEASE"], raw["FLUSH_INTERVAL"], raw["POLL_INTERVAL"]
    if None not in (lease, flush, poll) and lease < 3 * max(flush, poll):
        found.append(
            "LEVIPANEL_LEASE: must be at least 3 times LEVIPANEL_FLUSH_INTERVAL and "
            f"LEVIPANEL_POLL_INTERVAL (so a lease outlives two missed renewals): {lease:g} < "
            f"{3 * max(flush, poll):g}"
        )
    base, cap = raw["BACKOFF_BASE"], raw["BACKOFF_CAP"]
    if base is not None and cap is not None and cap < base:
        found.append("LEVIPANEL_BACKOFF_CAP: must not be smaller than LEVIPANEL_BACKOFF_BASE")
    return found


def _dir_problem(path: Path) -> str | None:
    """Why the runner could not write its logs in ``path``, or None (the runner would
    create it anyway, so the check may too)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror or exc}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None
