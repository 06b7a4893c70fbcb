"""Per-symbol JSON-lines logs: ``engine-{SYMBOL}-{YYYYMMDD}.jsonl``, a new file each UTC day.

Engines log to the ``levipanel.engine`` logger with ``extra={"symbol": ...}``. A queue
handler keeps file writes off the event loop; one routing handler in the listener thread
keeps a few files open (a thousand engines must not hold a thousand descriptors).
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections import OrderedDict
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import IO

from pythonjsonlogger.json import JsonFormatter

ENGINE_LOGGER = "levipanel.engine"
RUNNER_SYMBOL = "runner"


def log_path(log_dir: Path, symbol: str, created: float) -> Path:
    day = time.strftime("%Y%m%d", time.gmtime(created))
    return log_dir / f"engine-{symbol}-{day}.jsonl"


def json_formatter() -> JsonFormatter:
    """The guide's line: {"ts", "level", "symbol", "msg", ...}; ts in UTC."""
    formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(symbol)s %(message)s",
        rename_fields={"asctime": "ts", "levelname": "level", "message": "msg"},
        json_ensure_ascii=False,
    )
    formatter.converter = time.gmtime
    return formatter


def _private(path: str, flags: int) -> int:
    """Open a log file readable by its owner only: a new file is created 0600."""
    return os.open(path, flags, 0o600)


class SymbolFileHandler(logging.Handler):
    """Append each record to its symbol's file for the record's UTC day."""

    def __init__(self, log_dir: Path, *, max_open: int = 32) -> None:
        super().__init__()
        self._files: OrderedDict[Path, IO[str]] = OrderedDict()  # before anything can fail
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.max_open = max_open
        self.setFormatter(json_formatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if not getattr(record, "symbol", None):
                record.symbol = RUNNER_SYMBOL
            stream = self._stream(log_path(self.log_dir, record.symbol, record.created))
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)

    def _stream(self, path: Path) -> IO[str]:
        stream = self._files.get(path)
        if stream is not None:
            self._files.move_to_end(path)
            return stream
        if len(self._files) >= self.max_open:
            _, oldest = self._files.popitem(last=False)
            oldest.close()
        stream = self._files[path] = open(path, "a", encoding="utf-8", opener=_private)
        return stream

    def close(self) -> None:
        for stream in self._files.values():
            stream.close()
        self._files.clear()
        super().close()


class EngineLogs:
    """Route the engine logger to per-symbol files through a background thread."""

    def __init__(self, log_dir: Path, level: int = logging.INFO) -> None:
        self.queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.file_handler = SymbolFileHandler(log_dir)
        self.listener = QueueListener(self.queue, self.file_handler)
        self.queue_handler = QueueHandler(self.queue)
        self.logger = logging.getLogger(ENGINE_LOGGER)
        self.level = level

    def __enter__(self) -> EngineLogs:
        self.logger.addHandler(self.queue_handler)
        self.logger.setLevel(self.level)
        self.listener.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.logger.removeHandler(self.queue_handler)
        self.listener.stop()  # drains the queue first: no line is lost on shutdown
        self.file_handler.close()
