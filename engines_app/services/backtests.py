"""Backtests: run an engine config over candles with the live engine's code and store it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError

from ..models import Backtest, Engine
from ..runtime.backtest import run_backtest
from ..runtime.candles import read_candles
from ..runtime.engine import EngineConfig
from ..runtime.errors import ConfigError
from ..runtime.feeds.replay import DATA_DIR, csv_files


def candle_file(name: str, *, shipped_only: bool = False) -> Path:
    """A candle file: one shipped with the project (by its name), or, from the shell, any
    file. ValidationError when there is none."""
    if name in csv_files():
        return DATA_DIR / name
    if not shipped_only and Path(name).is_file():
        return Path(name)
    shipped = ", ".join(csv_files())
    where = f"one of: {shipped}" if shipped_only else f"a readable file, or one of: {shipped}"
    raise ValidationError(f"candle file {name!r} not found: use {where}")


def _stamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def backtest_run(
    *,
    symbol: str,
    config: dict[str, Any],
    source: str,
    start: datetime | None = None,
    end: datetime | None = None,
    shipped_only: bool = False,
    engine: Engine | None = None,
    user=None,
    save: bool = True,
) -> Backtest:
    """Run ``config`` for ``symbol`` over the candles of ``source`` opening in
    [``start``, ``end``) and store the result (unless ``save`` is false). A bad config,
    file or range raises ValidationError and stores nothing."""
    try:
        engine_config = EngineConfig.from_options(symbol, None, config)
        engine_config.validate()
    except ConfigError as exc:
        raise ValidationError(str(exc)) from None
    path = candle_file(source, shipped_only=shipped_only)
    try:
        candles = read_candles(path)
    except (OSError, ValueError, EOFError) as exc:
        raise ValidationError(f"cannot read {path.name}: {exc}") from None
    low = start.timestamp() if start else float("-inf")
    high = end.timestamp() if end else float("inf")
    candles = [c for c in candles if low <= c[0] < high]
    if len(candles) < 2:
        raise ValidationError(f"fewer than 2 candles of {path.name} in the range asked for")
    try:
        result = run_backtest(engine_config, candles)
    except (ConfigError, ValueError) as exc:
        raise ValidationError(str(exc)) from None
    row = Backtest(
        engine=engine,
        symbol=symbol,
        strategy=engine_config.strategy,
        params=dict(engine_config.params),
        config=config,
        source=path.name,
        interval=result.interval,
        first_at=_stamp(result.first_time),
        last_at=_stamp(result.last_time),
        candles=result.candles,
        seconds=result.seconds,
        metrics=result.metrics,
        trades=result.trades(),
        equity=[list(point) for point in result.equity],
        user=user if user is not None and getattr(user, "is_authenticated", False) else None,
    )
    if save:
        row.save()
    return row
