"""Indicators over arrays of prices, with numpy (pinned in requirements.txt).

Each takes a 1-D array, oldest first, and returns an array of the values that can be
computed (shorter than the input by the window less one), newest last.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def closes(candles: Iterable, count: int = -1) -> np.ndarray:
    """The close prices of candles (a strategy's ``self.candles``) as an array."""
    return np.fromiter((candle[4] for candle in candles), float, count)


def sma(values: np.ndarray, window: int) -> np.ndarray:
    """Simple moving average."""
    if len(values) < window:
        return np.empty(0)
    sums = np.cumsum(np.concatenate(([0.0], values)))
    return (sums[window:] - sums[:-window]) / window


def rolling_max(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window:
        return np.empty(0)
    return sliding_window_view(values, window).max(axis=1)


def rolling_min(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window:
        return np.empty(0)
    return sliding_window_view(values, window).min(axis=1)


def rsi(values: np.ndarray, window: int = 14) -> np.ndarray:
    """Relative strength index, 0-100, from simple averages of the gains and losses over
    ``window`` changes (Cutler's RSI); 50 where the prices did not move at all."""
    if len(values) <= window:
        return np.empty(0)
    change = np.diff(values)
    gain = sma(np.clip(change, 0, None), window)
    loss = sma(np.clip(-change, 0, None), window)
    total = gain + loss
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * gain / total, 50.0)
