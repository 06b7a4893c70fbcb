"""Trading through the real runner: a halt and its reason reach the database, an operator
restart lifts it, the daily reset is carried out, a silent feed shows as degraded."""

from __future__ import annotations

import signal

from tests.helpers import engine_row, eventually_sync, query

SETUP = """
from engines_app.services import engines as services
common = {"fee_rate": 0.0, "slippage": 0.0, "params": {"fast": 1, "slow": 2}}
services.engine_add(symbol="BTCUSDT", cycle_interval=0.02, config=common | {
    "feed": "prices", "feed_options": {"prices": [100, 101, 95, 96]},
    "daily_loss_limit": 5, "on_stop": "close"})
services.engine_add(symbol="ETHUSDT", cycle_interval=0.02, config=common | {
    "feed": "prices", "feed_options": {"prices": [100, 100, 100]}, "feed_stale_after": 5,
    "feed_dead_after": 10000})
"""


def reason(project, symbol: str) -> str:
    return query(project, "SELECT status_reason FROM engines_app_engine WHERE symbol = ?", symbol)[
        0
    ][0]


def commands(project, action: str) -> list[tuple]:
    return query(
        project,
        "SELECT symbol, outcome, message FROM engines_app_enginecommand "
        "WHERE action = ? ORDER BY symbol",
        action,
    )


def test_halt_reason_operator_restart_daily_reset_and_degraded_through_the_runner(project):
    project.manage("shell", "-c", SETUP)
    runner = project.start("manage.py", "runengines", log_name="runner")

    # 101 bought; marked at 95 the open loss is 6: halted, and closed at market.
    eventually_sync(lambda: engine_row(project, "BTCUSDT")[3] == "halted", message="not halted")
    assert reason(project, "BTCUSDT") == "daily loss limit reached: lost 6.00 today (limit 5)"
    eventually_sync(lambda: engine_row(project, "BTCUSDT")[:2] == (None, 2), message="not closed")
    # The other engine's feed ran dry: alive, degraded, and saying why.
    eventually_sync(lambda: engine_row(project, "ETHUSDT")[3] == "degraded", message="not degraded")
    assert reason(project, "ETHUSDT").startswith("no market data for ")

    # The scheduled reset on the same UTC day changes nothing: still halted.
    project.manage("shell", "-c", "from engines_app.jobs import tasks; tasks.daily_reset()")
    eventually_sync(lambda: [c[1] for c in commands(project, "reset_day")] == ["done", "done"])
    assert engine_row(project, "BTCUSDT")[3] == "halted"

    # An operator restart lifts the halt: it trades again, its limit counted from there.
    project.manage(
        "shell",
        "-c",
        "from engines_app import services\n"
        "services.engine_restart(symbol='BTCUSDT', source='test')",
    )
    eventually_sync(lambda: engine_row(project, "BTCUSDT")[1] == 4, message="did not trade again")
    eventually_sync(lambda: engine_row(project, "BTCUSDT")[3] == "halted")
    assert reason(project, "BTCUSDT") == "daily loss limit reached: lost 6.00 today (limit 5)"
    assert engine_row(project, "BTCUSDT")[2] == -12.0  # total PnL: two losses of 6

    runner.send_signal(signal.SIGTERM)
    assert runner.wait(20) == 0
