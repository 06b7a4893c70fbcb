"""Per-symbol JSON-lines logs: ``engine-{SYMBOL}-{YYYYMMDD}.jsonl``, a new file each UTC day.

Engines log to the ``levipanel.engine`` logger with ``extra={"symbol": ...}``. A queue
handler keeps file writes off the event loop; one routing handler in the listener thread
keeps a few files open (a thousand engines must not hold a thousand descriptors).

A full disk or an unwritable log dir must not stop an engine nor flood the runner's
output: the first failed write is reported once, lines are dropped (and counted) while
writes fail, a write is tried again each second, and once writes work with room on the disk
again, one line says how many lines were lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
from collections import OrderedDict
from collections.abc import Callable
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import IO

from pythonjsonlogger.json import JsonFormatter

ENGINE_LOGGER = "levipanel.engine"
RUNNER_SYMBOL = "runner"
RETRY_AFTER = 1.0  # seconds between write attempts while writes fail

# Not the engine logger: this one goes to the runner's own output.
log = logging.getLogger(__name__)


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

    def __init__(
        self,
        log_dir: Path,
        *,
        max_open: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._files: OrderedDict[Path, IO[str]] = OrderedDict()  # before anything can fail
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.max_open = max_open
        self.clock = clock
        self.lost = 0  # lines dropped because writes failed, in all
        self._failing_since: int | None = None  # ``lost`` when the current outage began
        self._retry_at = 0.0
        self.setFormatter(json_formatter())

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "symbol", None):
            record.symbol = RUNNER_SYMBOL
        if self._failing_since is not None and self.clock() < self._retry_at:
            self.lost += 1
            return
        path = log_path(self.log_dir, record.symbol, record.created)
        try:
            stream = self._stream(path)
            stream.write(self.format(record) + "\n")
            stream.flush()
        except OSError as exc:
            self._write_failed(path, exc)
        except Exception:
            self.handleError(record)
        else:
            if self._failing_since is not None:
                self._written_while_failing()

    def _written_while_failing(self) -> None:
        """Say logging resumed, once the disk has room again: a nearly full disk still
        takes a line now and then (the free end of a file's last block)."""
        if not _has_room(self.log_dir):
            self._retry_at = self.clock() + RETRY_AFTER
            return
        lost, self._failing_since = self.lost - self._failing_since, None
        log.warning("Engine logs are written again in %s: %d lines lost", self.log_dir, lost)

    def _write_failed(self, path: Path, exc: OSError) -> None:
        """Drop the line and the file (its buffer may hold a part of the line); say so once."""
        self.lost += 1
        stream = self._files.pop(path, None)
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
        self._retry_at = self.clock() + RETRY_AFTER
        if self._failing_since is None:
            self._failing_since = self.lost - 1
            log.error(
                "Engine logs cannot be written (%s: %s): lines are dropped until it works again",
                path,
                exc.strerror or exc,
            )

    def _stream(self, path: Path) -> IO[str]:
        stream = self._files.get(path)
        if stream is not None:
            self._files.move_to_end(path)
            return stream
        if len(self._files) >= self.max_open:
            _, oldest = self._files.popitem(last=False)
            oldest.close()
        stream = self._files[path] = open(path, "a", encoding="utf-8", opener=_private)
        if stream.tell() and _ends_mid_line(path):
            stream.write("\n")  # a line cut short by a full disk stays alone on its line
        return stream

    def close(self) -> None:
        for stream in self._files.values():
            stream.close()
        self._files.clear()
        super().close()


def _has_room(log_dir: Path, needed: int = 64 * 1024) -> bool:
    try:
        stats = os.statvfs(log_dir)
    except OSError:
        return True  # no way to tell: a write that worked is the best sign there is
    return stats.f_bavail * stats.f_frsize >= needed


def _ends_mid_line(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) != b"\n"


class ThreadQueueHandler(QueueHandler):
    """Hand the record to the listener thread as it is. The standard ``prepare`` formats
    and copies every record in the caller's thread so that it can cross to another process;
    here that was half the cost of an engine's log line, on the event loop. A record with a
    traceback is still prepared as before: its line carries the traceback in ``msg``."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.exc_info or record.stack_info:
            return super().prepare(record)
        return record


class EngineLogs:
    """Route the engine logger to per-symbol files through a background thread."""

    def __init__(self, log_dir: Path, level: int = logging.INFO) -> None:
        self.queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.file_handler = SymbolFileHandler(log_dir)
        self.listener = QueueListener(self.queue, self.file_handler)
        self.queue_handler = ThreadQueueHandler(self.queue)
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
