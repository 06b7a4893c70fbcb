"""An error storm from a feed stays bounded: a stream sending 2,000 malformed messages a second
for 10 s, between good prices, to a real runner on a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

from websockets.asyncio.server import serve

from engines_app.testing import free_port
from tests.helpers import eventually_sync

MB = 1024 * 1024
SYMBOL = "BTCUSDT"


def trade(price: float) -> str:
    return json.dumps({"e": "trade", "E": 1, "s": SYMBOL, "p": str(price), "q": "1"})


class StormyExchange:
    """A stream on loopback: a good price every 50 ms; with ``storm`` on, ``rate`` malformed
    messages a second besides (the kind an exchange sends when it adds an event type)."""

    def __init__(self, port: int, rate: int = 2000) -> None:
        self.port, self.rate = port, rate
        self.storm = threading.Event()
        self.malformed_sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def __enter__(self) -> StormyExchange:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _serve(self) -> None:
        async with serve(self._handler, "127.0.0.1", self.port):
            while not self._stop.is_set():
                await asyncio.sleep(0.05)

    async def _handler(self, socket) -> None:
        price, tick = 100.0, 0
        while not self._stop.is_set():
            started = time.monotonic()
            tick += 1
            price += 0.5 if tick % 40 < 20 else -0.5  # swings: the strategy trades
            await socket.send(trade(price))
            if self.storm.is_set():
                burst = self.rate // 20
                for n in range(burst):
                    await socket.send(json.dumps({"e": "newEventType", "n": n}))
                self.malformed_sent += burst
            await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - started)))


def engine_row(database: Path) -> tuple[int, int, str, float | None]:
    with sqlite3.connect(database) as db:
        return db.execute(
            "SELECT error_count, trade_count, status, "
            "strftime('%s', 'now') - strftime('%s', last_tick_at) "
            "FROM engines_app_engine WHERE symbol = ?",
            (SYMBOL,),
        ).fetchone()


def size(*paths: Path) -> int:
    return sum(path.stat().st_size for path in paths if path.exists())


def test_a_feed_error_storm_grows_the_database_and_the_log_by_less_than_a_megabyte(project):
    port = free_port()
    config = {
        "feed": "ws",
        "feed_options": {"url": f"ws://127.0.0.1:{port}/ws"},
        "params": {"fast": 2, "slow": 5},
    }
    project.manage(
        "shell",
        "-c",
        "from engines_app import services; "
        f"services.engine_add(symbol={SYMBOL!r}, config={config!r})",
    )
    database = project.data_dir / "levipanel.sqlite3"
    files = [database, Path(f"{database}-wal")]
    logs = project.data_dir / "logs"
    with StormyExchange(port) as exchange:
        runner = project.start(
            "manage.py",
            "runengines",
            "--symbols",
            SYMBOL,
            log_name="runner",
        )
        eventually_sync(lambda: engine_row(database)[2] == "running", timeout=30)
        eventually_sync(lambda: engine_row(database)[1] >= 1, timeout=30)  # it trades
        db_before = size(*files)
        log_before = sum(size(path) for path in logs.glob("engine-*.jsonl"))
        trades_before = engine_row(database)[1]

        exchange.storm.set()
        time.sleep(10)  # the storm's length is the scenario, not a wait for a condition
        exchange.storm.clear()

        sent = exchange.malformed_sent
        errors = eventually_sync(
            lambda: (row := engine_row(database))[0] >= sent * 0.95 and row, timeout=15
        )
        db_growth = size(*files) - db_before
        log_growth = sum(size(path) for path in logs.glob("engine-*.jsonl")) - log_before
        assert runner.poll() is None

    assert sent >= 15_000  # about 2,000 a second for 10 s
    error_count, trades, status, tick_age = errors
    assert status == "running" and tick_age is not None and tick_age < 5  # good prices go on
    assert trades > trades_before  # and it kept trading on them
    assert db_growth < MB, f"database grew {db_growth / MB:.2f} MB"
    assert log_growth < MB, f"log grew {log_growth / MB:.2f} MB"
    with sqlite3.connect(database) as db:
        rows, repeats = db.execute(
            "SELECT count(*), sum(count) FROM engines_app_engineerror WHERE NOT crashed"
        ).fetchone()
    assert rows <= 3 and repeats == error_count  # coalesced, every one counted
    log_text = "".join(path.read_text() for path in logs.glob("engine-*.jsonl"))
    assert "Suppressed" in log_text
