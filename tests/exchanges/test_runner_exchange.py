"""A testnet engine through the real runner process and the fake exchange: fills stored
once with their runner and epoch, a runner killed between an order's send and its answer
does not double it, and the account's keys are nowhere in the database or the log."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from cryptography.fernet import Fernet

from engines_app.runtime.exchanges import URLS_ENV
from engines_app.testing import Installation
from engines_app.vault import KEYS_ENV
from tests.helpers import engine_row, eventually_sync, query
from tests.helpers.fake_exchange import FakeExchange

API_KEY, SECRET = "key-runner-5c1e", "secret-runner-9a4f"
SETUP = f"""
from engines_app import services
services.account_save(name="main", exchange="binance", api_key="{API_KEY}", secret="{SECRET}")
services.engine_add(symbol="BTCUSDT", cycle_interval=0.05, config={{
    "feed": "ccxt", "feed_options": {{"exchange": "binance", "market": "BTC/USDT"}},
    "broker": "testnet", "broker_options": {{"account": "main"}},
    "params": {{"fast": 1, "slow": 2}}, "order_qty": 0.5,
    "feed_stale_after": 1000, "feed_dead_after": 10000}})
"""


def tick(exchange: FakeExchange, price: float) -> None:
    exchange.trade(price)
    time.sleep(0.3)  # a few cycles: each price is seen


def trades(project: Installation) -> list[tuple]:
    return query(project, "SELECT fill_id, seq, side, qty, runner, epoch FROM engines_app_trade")


def test_a_killed_runner_mid_order_neither_doubles_nor_loses_it(tmp_path: Path):
    with FakeExchange() as exchange:
        env = {URLS_ENV: json.dumps({"binance": exchange.url}), KEYS_ENV: Fernet.generate_key()}
        env[KEYS_ENV] = env[KEYS_ENV].decode()
        with Installation(tmp_path / "data", env) as project:
            project.migrate()
            project.manage("shell", "-c", SETUP)
            [(engine_id,)] = query(project, "SELECT id FROM engines_app_engine")
            runner = project.start("manage.py", "runengines", log_name="runner")
            eventually_sync(lambda: exchange.subscribers >= 1, timeout=30)

            # One order through: stored once, with the runner and epoch that made it.
            tick(exchange, 100.0)
            tick(exchange, 101.0)
            eventually_sync(lambda: len(trades(project)) == 1, timeout=15)
            [(fill_id, seq, side, qty, by, epoch)] = trades(project)
            assert (fill_id, seq, side, qty) == (f"lv{engine_id}x1", 1, "buy", 0.5)
            assert by and epoch >= 1
            assert exchange.orders_for(fill_id)

            # The next order reaches the exchange, its answer never comes: kill -9 there.
            exchange.fail_next.append("hang")
            tick(exchange, 99.0)
            assert exchange.hung.wait(15)
            runner.send_signal(signal.SIGKILL)
            runner.wait(10)
            assert len(trades(project)) == 1  # the sell was never stored

            runner = project.start("manage.py", "runengines", log_name="runner2")
            eventually_sync(lambda: len(trades(project)) == 2, timeout=30)
            sell = trades(project)[1] if trades(project)[1][1] == 2 else trades(project)[0]
            assert sell[:4] == (f"lv{engine_id}x2", 2, "sell", 0.5)
            assert len(exchange.orders) == 2  # booked from the exchange, not sent again
            eventually_sync(lambda: engine_row(project, "BTCUSDT")[:2] == (None, 2))
            assert exchange.position() == 0
            exchange.release_hung()
            runner.send_signal(signal.SIGTERM)
            assert runner.wait(20) == 0

            # The keys: encrypted at rest, in no log.
            database = (project.data_dir / "levipanel.sqlite3").read_bytes()
            assert API_KEY.encode() not in database and SECRET.encode() not in database
            for log in (project.data_dir).rglob("*.log"):
                text = log.read_text(errors="replace")
                assert API_KEY not in text and SECRET not in text, log
            assert API_KEY in exchange.api_keys


def test_kill_switch_closes_on_the_exchange_and_a_mismatch_fails_the_engine(tmp_path: Path):
    with FakeExchange() as exchange:
        env = {URLS_ENV: json.dumps({"binance": exchange.url})}
        env[KEYS_ENV] = Fernet.generate_key().decode()
        with Installation(tmp_path / "data", env) as project:
            project.migrate()
            project.manage("shell", "-c", SETUP)
            runner = project.start("manage.py", "runengines", log_name="runner")
            eventually_sync(lambda: exchange.subscribers >= 1, timeout=30)
            tick(exchange, 100.0)
            tick(exchange, 101.0)
            eventually_sync(lambda: engine_row(project, "BTCUSDT")[:2] == (0.5, 1), timeout=15)

            # The kill switch, closing: stopped, and the position sold on the exchange.
            out = project.manage("exchanges", "kill", "--close")
            assert "Kill switch pulled: 1 engines stopping" in out.stdout
            eventually_sync(lambda: engine_row(project, "BTCUSDT")[3] == "stopped", timeout=15)
            eventually_sync(lambda: engine_row(project, "BTCUSDT")[:2] == (None, 2), timeout=15)
            assert [o.side for o in exchange.orders] == ["BUY", "SELL"]
            assert exchange.position() == 0
            done = ("done", "stopped by the kill switch, position closed")
            sql = "SELECT outcome, message FROM engines_app_enginecommand WHERE action = ?"
            eventually_sync(lambda: query(project, sql, "kill_close") == [done], timeout=15)

            # Someone trades on the account meanwhile: started again, the engine refuses.
            exchange.balances["BTC"] = 0.7
            project.manage(
                "shell",
                "-c",
                "from engines_app import services; services.engine_start(symbol='BTCUSDT')",
            )
            eventually_sync(lambda: engine_row(project, "BTCUSDT")[3] == "failed", timeout=15)
            [(reason,)] = query(
                project, "SELECT status_reason FROM engines_app_engine WHERE symbol = 'BTCUSDT'"
            )
            assert "position mismatch on binance BTC/USDT: the exchange holds 0.7 BTC" in reason
            assert len(exchange.orders) == 2  # nothing guessed, nothing sent
            runner.send_signal(signal.SIGTERM)
            assert runner.wait(20) == 0
