"""Per-symbol JSONL logs: the guide's fields, a new file each UTC day, nothing lost."""

import json
import logging
from datetime import UTC, datetime

import time_machine

from engines_app.runtime.jsonlog import ENGINE_LOGGER, EngineLogs

log = logging.getLogger(ENGINE_LOGGER)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lines_parse_and_carry_the_fields(tmp_path):
    with EngineLogs(tmp_path):
        with time_machine.travel(datetime(2025, 10, 13, 14, 30, 45, 500000, tzinfo=UTC)):
            log.info("Starting engine for %s", "BTCUSDT", extra={"symbol": "BTCUSDT"})
        try:
            raise RuntimeError("feed closed")
        except RuntimeError:
            log.exception("Engine BTCUSDT crashed", extra={"symbol": "BTCUSDT"})
    first, second = read(tmp_path / "engine-BTCUSDT-20251013.jsonl")[0], None
    assert first == {
        "ts": "2025-10-13 14:30:45,500",
        "level": "INFO",
        "symbol": "BTCUSDT",
        "msg": "Starting engine for BTCUSDT",
    }
    (today,) = [p for p in tmp_path.iterdir() if not p.name.endswith("20251013.jsonl")]
    second = read(today)[0]
    assert second["level"] == "ERROR"
    assert "RuntimeError: feed closed" in second["msg"]


def test_a_new_file_each_utc_day_and_one_per_symbol(tmp_path):
    with EngineLogs(tmp_path):
        with time_machine.travel(datetime(2025, 10, 13, 23, 59, 59, tzinfo=UTC)):
            log.info("before midnight", extra={"symbol": "BTCUSDT"})
            log.info("eth", extra={"symbol": "ETHUSDT"})
        with time_machine.travel(datetime(2025, 10, 14, 0, 0, 1, tzinfo=UTC)):
            log.info("after midnight", extra={"symbol": "BTCUSDT"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "engine-BTCUSDT-20251013.jsonl",
        "engine-BTCUSDT-20251014.jsonl",
        "engine-ETHUSDT-20251013.jsonl",
    ]
    assert read(tmp_path / "engine-BTCUSDT-20251014.jsonl")[0]["msg"] == "after midnight"


def test_many_symbols_do_not_hold_many_files_open(tmp_path):
    with EngineLogs(tmp_path) as logs:
        for i in range(200):
            log.info("line", extra={"symbol": f"S{i:03d}USDT"})
        logs.listener.stop()
        logs.listener.start()
        assert len(logs.file_handler._files) <= logs.file_handler.max_open
    assert len(list(tmp_path.iterdir())) == 200
    assert all(len(read(p)) == 1 for p in tmp_path.iterdir())
