"""Per-symbol JSONL logs: the guide's fields, a new file each UTC day, nothing lost; a full
disk reported once, the lines it drops counted, logging resumed when it frees."""

import json
import logging
import time
from datetime import UTC, datetime

import time_machine

from engines_app.runtime import jsonlog
from engines_app.runtime.jsonlog import (
    ENGINE_LOGGER,
    RETRY_AFTER,
    EngineLogs,
    SymbolFileHandler,
    log_path,
)
from tests.helpers import FakeClock

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


def test_a_full_disk_is_reported_once_drops_lines_and_logging_resumes(tmp_path, caplog):
    # /dev/full fails every write with ENOSPC, as a full disk does; removing the link frees it.
    clock = FakeClock()
    handler = SymbolFileHandler(tmp_path, clock=clock)
    path = log_path(tmp_path, "BTCUSDT", time.time())
    path.symlink_to("/dev/full")

    def emit(message):
        handler.emit(
            log.makeRecord(
                ENGINE_LOGGER, logging.INFO, "", 0, message, (), None, extra={"symbol": "BTCUSDT"}
            )
        )

    with caplog.at_level(logging.WARNING, logger=jsonlog.__name__):
        for i in range(50):
            emit(f"full {i}")
        clock.now += RETRY_AFTER
        emit("still full")  # one try a second, and still no second report
        path.unlink()
        emit("dropped: the next try is a second later")
        clock.now += RETRY_AFTER
        emit("written again")
        emit("and again")
    handler.close()
    reports = [record.getMessage() for record in caplog.records]
    assert len(reports) == 2, reports
    assert "cannot be written" in reports[0] and "No space left on device" in reports[0]
    assert reports[1].endswith("52 lines lost")
    assert handler.lost == 52
    assert [line["msg"] for line in read(path)] == ["written again", "and again"]


def test_a_line_cut_short_by_a_full_disk_stays_alone_on_its_line(tmp_path):
    path = log_path(tmp_path, "BTCUSDT", time.time())
    path.write_text('{"ts": "2026-01-01 00:00:00,000", "msg": "cut sh')
    with EngineLogs(tmp_path):
        log.info("after the disk freed", extra={"symbol": "BTCUSDT"})
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["msg"] == "after the disk freed"


def test_a_line_written_in_part_is_counted_and_the_next_line_starts_a_line(tmp_path, monkeypatch):
    # A disk that fills mid-line takes part of it and says nothing: os.write returns less.
    clock = FakeClock()
    handler = SymbolFileHandler(tmp_path, clock=clock)
    write = jsonlog.os.write

    def emit(message):
        handler.emit(
            log.makeRecord(
                ENGINE_LOGGER, logging.INFO, "", 0, message, (), None, extra={"symbol": "BTCUSDT"}
            )
        )

    emit("whole")
    monkeypatch.setattr(jsonlog.os, "write", lambda fd, data: write(fd, data[:10]))
    emit("cut short")
    monkeypatch.setattr(jsonlog.os, "write", write)
    clock.now += RETRY_AFTER
    emit("after the disk freed")
    handler.close()
    lines = log_path(tmp_path, "BTCUSDT", time.time()).read_text().splitlines()
    assert handler.lost == 1
    assert json.loads(lines[0])["msg"] == "whole"
    assert len(lines[1]) == 10
    assert json.loads(lines[2])["msg"] == "after the disk freed"
