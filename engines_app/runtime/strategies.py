"""Strategies: the plug-in interface, the two built-ins, and safe loading by name.

A strategy is a class deriving from ``Strategy``. The engine gives it closed candles
(``on_candle``) and, when it asks for them or runs without candles, each price
(``on_tick``), with the engine's position in units of the engine's ``order_qty``. It answers
with what it wants:

- ``None``: keep what it has;
- a number: the target position in units of ``order_qty`` (1 long, -1 short, 0 flat);
- ``Target(position, stop_loss=…, take_profit=…)``: the same with price levels the engine
  enforces while the position is open;
- ``Order(qty, …)``: a market order of ``qty`` units of ``order_qty`` (signed: > 0 buys).

It declares its parameters as ``Param`` objects (type, default, bounds): a config with an
unknown parameter or a value out of bounds is refused with the reason. Built-ins are known
by their short names (``sma_cross``, ``breakout``); any other strategy is named
``"package.module:ClassName"`` and is loaded only from a module listed by the operator
(``set_allowed_modules``, from the setting ``LEVIPANEL_STRATEGY_MODULES``).
"""

from __future__ import annotations

import importlib
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from .candles import INTERVALS, Candle

STRATEGY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class Target:
    """The position wanted, in units of ``order_qty``, with optional exit levels."""

    __slots__ = ("position", "stop_loss", "take_profit")

    def __init__(
        self,
        position: float,
        *,
        stop_loss: float | None = None,
        take_profit: float | None = None,
    ) -> None:
        self.position, self.stop_loss, self.take_profit = position, stop_loss, take_profit

    def __repr__(self) -> str:
        return f"Target({self.position}, stop_loss={self.stop_loss}, tp={self.take_profit})"


class Order:
    """A market order of ``qty`` units of ``order_qty`` (> 0 buys, < 0 sells), with
    optional exit levels for the position it leads to."""

    __slots__ = ("qty", "stop_loss", "take_profit")

    def __init__(
        self, qty: float, *, stop_loss: float | None = None, take_profit: float | None = None
    ) -> None:
        self.qty, self.stop_loss, self.take_profit = qty, stop_loss, take_profit


class Param:
    """One declared parameter: its type comes from its default (int, float, bool, str);
    ``minimum``/``maximum`` bound numbers, ``choices`` bounds strings."""

    __slots__ = ("default", "minimum", "maximum", "choices", "help")

    def __init__(
        self,
        default: int | float | bool | str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        choices: Iterable[str] | None = None,
        help: str = "",
    ) -> None:
        self.default, self.minimum, self.maximum = default, minimum, maximum
        self.choices = tuple(choices) if choices is not None else None
        self.help = help

    @property
    def kind(self) -> type:
        return type(self.default)

    def problem(self, name: str, value: object) -> str | None:
        """Why ``value`` is no good for this parameter, or None."""
        kind = self.kind
        if kind is bool:
            return None if isinstance(value, bool) else f"params.{name} must be true or false"
        if kind is str:
            if not isinstance(value, str):
                return f"params.{name} must be a string"
            if self.choices is not None and value not in self.choices:
                return f"params.{name} must be one of: {', '.join(self.choices)}"
            return None
        whole = kind is int
        number = isinstance(value, int) if whole else isinstance(value, int | float)
        if not number or isinstance(value, bool) or not _finite(value):
            words = "a whole number" if whole else "a number"
        elif (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            words = "a whole number" if whole else "a number"
        else:
            return None
        if self.minimum is not None and self.maximum is not None:
            return f"params.{name} must be {words} from {self.minimum:g} to {self.maximum:g}"
        if self.minimum is not None:
            return f"params.{name} must be {words} >= {self.minimum:g}"
        if self.maximum is not None:
            return f"params.{name} must be {words} <= {self.maximum:g}"
        return f"params.{name} must be {words}"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind.__name__, "default": self.default}
        for key in ("minimum", "maximum", "choices", "help"):
            if (value := getattr(self, key)) not in (None, ""):
                out[key] = value
        return out


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past any float
        return False


class Strategy:
    """The base of every strategy. Override ``on_candle`` (and ``on_tick`` with
    ``wants_ticks``); declare ``params``; set the class options below as needed."""

    params: ClassVar[dict[str, Param]] = {}
    # The candle interval it trades on ("1m", "5m", "1h" …; the config's candle_interval
    # overrides it). None: no candles, ``on_tick`` on every price (the built-ins' default).
    interval: ClassVar[str | None] = "1m"
    wants_ticks: ClassVar[bool] = False  # also call on_tick on every price
    heavy: ClassVar[bool] = False  # decisions run in the runner's worker threads
    # Candles it needs before it can decide (kept, and replayed to it on a restart); a
    # property when it depends on the parameters, as the built-ins' does.
    warmup: ClassVar[int] = 0
    history: ClassVar[int] = 0  # candles the engine keeps for it in ``self.candles``

    def __init__(self, **params: Any) -> None:
        for name, param in self.params.items():
            setattr(self, name, params.get(name, param.default))
        self.candles: deque[Candle] = deque()  # the engine's kept candles, oldest first

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        """Problems between parameters (each one already has the right type and bounds)."""
        return []

    def on_candle(self, candle: Candle, position: float) -> Any:
        return None

    def on_tick(self, price: float, position: float) -> Any:
        return None


def _flat_or_short(allow_short: bool) -> int:
    return -1 if allow_short else 0


WINDOW = Param(5, minimum=1, maximum=1000)


class SmaCross(Strategy):
    """Long while the fast moving average is above the slow one; flat (or short) below.
    The sums are kept incrementally over a ring of the last ``slow`` prices (and
    recomputed now and then against rounding drift), so a step costs the same whatever
    the windows."""

    params = {
        "fast": Param(5, minimum=1, maximum=1000, help="candles (or ticks) of the fast average"),
        "slow": Param(20, minimum=1, maximum=1000, help="candles (or ticks) of the slow average"),
        "allow_short": Param(False, help="short below instead of flat"),
    }
    interval = None  # ticks unless the config asks for candles

    __slots__ = ("fast", "slow", "allow_short", "candles", "_ring", "_fsum", "_ssum", "_n", "_low")

    @property
    def warmup(self) -> int:  # type: ignore[override]
        return self.slow

    def __init__(self, fast: int = 5, slow: int = 20, allow_short: bool = False) -> None:
        self.fast, self.slow, self.allow_short = fast, slow, allow_short
        self.candles: deque[Candle] = deque()
        self._ring = [0.0] * slow  # the last ``slow`` prices; zeros before the first ones
        self._fsum = self._ssum = 0.0
        self._n = 0
        self._low = -1 if allow_short else 0

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        if params["fast"] >= params["slow"]:
            return ["params.fast must be smaller than params.slow"]
        return []

    def on_candle(self, candle: Candle, position: float = 0.0) -> int | None:
        return self.on_tick(candle[4], position)  # on the close

    def on_tick(self, price: float, position: float = 0.0) -> int | None:
        ring, slow, n = self._ring, self.slow, self._n
        at = n % slow
        # The price leaving the fast window is read before the slot is overwritten; while
        # warming up the slots leaving are still 0.0, so the sums need no special case.
        fsum = self._fsum - ring[(n - self.fast) % slow] + price
        ssum = self._ssum - ring[at] + price
        ring[at] = price
        self._n = n = n + 1
        if not n & 1023:  # drop the rounding the running sums picked up
            ssum = math.fsum(ring)
            fsum = math.fsum(ring[(n - 1 - i) % slow] for i in range(self.fast))
        self._fsum, self._ssum = fsum, ssum
        if n < slow:
            return None  # still warming up
        # Compare the sums scaled, not the averages: no division on the hot path.
        fast_side, slow_side = fsum * slow, ssum * self.fast
        if fast_side > slow_side:
            return 1
        if fast_side < slow_side:
            return self._low
        return None


class Breakout(Strategy):
    """Momentum: long on a close above the highest of the last ``lookback`` prices, flat
    (or short) on a close below the lowest."""

    params = {
        "lookback": Param(20, minimum=1, maximum=1000, help="candles (or ticks) looked back"),
        "allow_short": Param(False, help="short below instead of flat"),
    }
    interval = None

    __slots__ = ("lookback", "allow_short", "candles", "_prices")

    @property
    def warmup(self) -> int:  # type: ignore[override]
        return self.lookback

    def __init__(self, lookback: int = 20, allow_short: bool = False) -> None:
        self.lookback, self.allow_short = lookback, allow_short
        self.candles: deque[Candle] = deque()
        self._prices: deque[float] = deque(maxlen=lookback)

    def on_tick(self, price: float, position: float = 0.0) -> int | None:
        prices = self._prices
        full = len(prices) == self.lookback
        result = None
        if full and price > max(prices):
            result = 1
        elif full and price < min(prices):
            result = _flat_or_short(self.allow_short)
        prices.append(price)
        return result

    def on_candle(self, candle: Candle, position: float = 0.0) -> int | None:
        return self.on_tick(candle[4], position)


BUILTINS: dict[str, type[Strategy]] = {"sma_cross": SmaCross, "breakout": Breakout}
# name -> (class, default parameters): the built-ins, for listings.
STRATEGIES: dict[str, tuple[type, dict[str, Any]]] = {
    name: (cls, {key: p.default for key, p in cls.params.items()}) for name, cls in BUILTINS.items()
}

_allowed: tuple[str, ...] = ()


def set_allowed_modules(modules: Iterable[str]) -> None:
    """The modules strategies may be loaded from (the setting LEVIPANEL_STRATEGY_MODULES)."""
    global _allowed
    _allowed = tuple(modules)


def allowed_modules() -> tuple[str, ...]:
    return _allowed


def load_strategy(name: object) -> type[Strategy] | str:
    """The strategy class a config names, or the reason it cannot be had."""
    if isinstance(name, str) and name in BUILTINS:
        return BUILTINS[name]
    if not isinstance(name, str) or not STRATEGY_RE.fullmatch(name):
        return (
            f"strategy must be one of: {', '.join(sorted(BUILTINS))}, or "
            '"package.module:ClassName" from a module in LEVIPANEL_STRATEGY_MODULES'
        )
    module_name, _, class_name = name.partition(":")
    if module_name not in _allowed:
        return (
            f"strategy module {module_name} is not in LEVIPANEL_STRATEGY_MODULES "
            f"(allowed: {', '.join(_allowed) or 'none'})"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # its own code may raise anything while importing
        return f"strategy module {module_name} cannot be imported: {type(exc).__name__}: {exc}"
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Strategy):
        return f"{name} is not a strategy class (a subclass of Strategy)"
    return cls


def module_problem(module_name: object) -> str | None:
    """Why an entry of LEVIPANEL_STRATEGY_MODULES cannot be used, or None."""
    if not isinstance(module_name, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", module_name):
        return f"{module_name!r} is not a module name like package.module"
    try:
        importlib.import_module(module_name)
    except Exception as exc:
        return f"{module_name} cannot be imported: {type(exc).__name__}: {exc}"
    return None


def strategy_problems(name: object, params: object) -> list[str]:
    """Every reason ``name`` with ``params`` cannot run."""
    cls = load_strategy(name)
    if isinstance(cls, str):
        return [cls]
    if not isinstance(params, Mapping):
        return ["params must be a mapping"]
    declared = cls.params
    label = name if name in BUILTINS else cls.__name__
    out = [f"unknown {label} parameter: {key}" for key in sorted(set(params) - set(declared))]
    merged = {key: params.get(key, p.default) for key, p in declared.items()}
    out.extend(p for key, param in declared.items() if (p := param.problem(key, merged[key])))
    if not out:
        try:
            out.extend(cls.check(merged))
        except Exception as exc:  # its own code
            out.append(f"{label} cannot check its parameters: {type(exc).__name__}: {exc}")
    return out


def interval_problem(candle_interval: object) -> str | None:
    if candle_interval is not None and (
        not isinstance(candle_interval, str) or candle_interval not in INTERVALS
    ):
        return f"candle_interval must be null or one of: {', '.join(INTERVALS)}"
    return None


def make_strategy(name: str, params: Mapping[str, Any]) -> Strategy:
    cls = load_strategy(name)
    if isinstance(cls, str):
        raise LookupError(cls)
    return cls(**{key: params.get(key, p.default) for key, p in cls.params.items()})


def describe(cls: type[Strategy]) -> dict[str, Any]:
    """What a form or a client needs to know of a strategy."""
    return {
        "doc": (cls.__doc__ or "").strip(),
        "interval": cls.interval,
        "wants_ticks": cls.wants_ticks,
        "heavy": cls.heavy,
        "params": {key: p.describe() for key, p in cls.params.items()},
    }
