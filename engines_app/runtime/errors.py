"""Engine errors, classed by what recovery should do with them."""


class EngineError(Exception):
    """Base of the errors an engine raises on purpose."""


class FatalEngineError(EngineError):
    """Retrying cannot help (bad config, invalid symbol): fail at once."""


class ConfigError(FatalEngineError):
    """The engine's configuration is invalid."""


class InvalidSymbolError(FatalEngineError):
    """The symbol is malformed or unknown to the market."""


class CrashError(EngineError):
    """Ends the engine's task at once (the cycle does not swallow it); retryable."""


class InjectedCrash(CrashError):
    """A crash asked for by failure injection (demos and tests)."""


class HeartbeatTimeout(CrashError):
    """The engine stopped heart-beating: it is hung and was cancelled."""


def is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, FatalEngineError)


class FeedSilent(CrashError):
    """No market data for longer than the feed's dead-after limit: treated as a hang."""


class FillConflict(EngineError):
    """A fill's sequence number is another stored fill's: the book here is not the stored
    one. Never papered over: the engine stops and is rebuilt from the stored fills."""


class RiskHalt(EngineError):
    """A risk limit stops the engine until the next UTC day or an operator's restart.
    ``code`` names the limit (``risk.DAILY_LOSS``): what alerts key on, not the message."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class StrategyError(EngineError):
    """A strategy answered with something that is not a decision (a cycle error)."""


class SlowStrategy(EngineError):
    """A strategy's decision took longer than its cycle. Reported, never raised."""
