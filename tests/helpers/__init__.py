"""The tests' toolkit: waiting on a condition, fake clocks, an HTTP recorder, engines driven by
hand, a runner in the test's loop, the users and rows tests set up or read back, the ledger
invariants and a TCP proxy that cuts one process off.

The subprocess harness (an installation in a temp data dir) is ``engines_app.testing``: the
benchmarks use it too. Fixtures live in ``tests/conftest.py``.
"""

from .clocks import DAY, T0, FakeClock, ShiftedClock
from .fuzzing import fuzz_examples, fuzz_settings
from .ledger import check_ledger, ledger_problems
from .proxy import TcpProxy
from .rows import (
    SHOWN_HEARTBEATS,
    bearer,
    book_rows,
    engine_row,
    heartbeat,
    hold,
    make_user,
    query,
    samples,
)
from .runner import (
    FAST_RUNNER,
    TRADES_OFTEN,
    close_db_thread_connection,
    db,
    fast_settings,
    running,
)
from .services import CHROMIUM, IN_CI, need_service
from .trading import EngineRecorder, ticking_engine, trades
from .waiting import eventually, eventually_sync
from .webhooks import HttpRecorder, Received

__all__ = [
    "SHOWN_HEARTBEATS",
    "FAST_RUNNER",
    "TRADES_OFTEN",
    "CHROMIUM",
    "DAY",
    "EngineRecorder",
    "FakeClock",
    "HttpRecorder",
    "IN_CI",
    "Received",
    "ShiftedClock",
    "T0",
    "TcpProxy",
    "bearer",
    "book_rows",
    "check_ledger",
    "close_db_thread_connection",
    "db",
    "engine_row",
    "eventually",
    "eventually_sync",
    "fast_settings",
    "fuzz_examples",
    "fuzz_settings",
    "heartbeat",
    "hold",
    "ledger_problems",
    "make_user",
    "need_service",
    "query",
    "running",
    "samples",
    "ticking_engine",
    "trades",
]
