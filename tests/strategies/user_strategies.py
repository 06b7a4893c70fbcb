"""Strategies as a user writes them, loaded by the tests through LEVIPANEL_STRATEGY_MODULES."""

from __future__ import annotations

import threading
import time

from engines_app.runtime.strategies import Order, Param, Strategy, Target


class Rises(Strategy):
    """Long after ``rises`` closes in a row each above the one before, with a stop loss
    ``stop`` below and a take profit ``take`` above the close it entered at."""

    params = {
        "rises": Param(2, minimum=1, maximum=10),
        "stop": Param(0.02, minimum=0.001, maximum=0.5),
        "take": Param(0.05, minimum=0.001, maximum=1.0),
    }
    warmup = 10

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.last = None
        self.run = 0

    def on_candle(self, candle, position):
        close = candle.close
        self.run = self.run + 1 if self.last is not None and close > self.last else 0
        self.last = close
        if position == 0 and self.run >= self.rises:
            return Target(1, stop_loss=close * (1 - self.stop), take_profit=close * (1 + self.take))
        return None


class Stepper(Strategy):
    """Buys one order on every candle that closes up, sells one on every one that closes
    down: orders rather than targets."""

    def on_candle(self, candle, position):
        if candle.close > candle.open:
            return Order(1)
        if candle.close < candle.open and position > 0:
            return Order(-1)
        return None


class Raises(Strategy):
    """A strategy with a bug: it raises on every candle after the first ``after``."""

    params = {"after": Param(0, minimum=0, maximum=1000)}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.seen = 0

    def on_candle(self, candle, position):
        self.seen += 1
        if self.seen > self.after:
            raise RuntimeError("the model is not loaded")
        return 1


class Garbage(Strategy):
    """Answers something that is no decision."""

    def on_candle(self, candle, position):
        return "buy please"


class Sleeper(Strategy):
    """Holds the thread for ``seconds`` on every candle: slow, and (not heavy) blocking."""

    params = {"seconds": Param(0.3, minimum=0.0, maximum=10.0)}
    threads: set[str] = set()  # where its decisions ran

    def on_candle(self, candle, position):
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)  # a model's work, which (like numpy) lets go of the GIL
        return 1


class HeavySleeper(Sleeper):
    """The same work, declared heavy: it runs in the worker pool."""

    heavy = True


class Picky(Strategy):
    """Parameters of every kind, with a check between two of them."""

    params = {
        "window": Param(10, minimum=2, maximum=500),
        "band": Param(1.5, minimum=0.1, maximum=5.0),
        "mode": Param("close", choices=("close", "hl2")),
        "short": Param(False),
        "low": Param(1, minimum=0, maximum=100),
        "high": Param(2, minimum=0, maximum=100),
    }

    @classmethod
    def check(cls, params):
        return ["params.low must be below params.high"] if params["low"] >= params["high"] else []


class NotAStrategy:
    def on_candle(self, candle, position):
        return 1
