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
import errno
import logging
import os
import queue
import time
from collections import OrderedDict
from collections.abc import Callable
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

ENGINE_LOGGER = "levipanel.engine"
RUNNER_SYMBOL = "runner"
RETRY_AFTER = 1.0  # seconds between write attempts while writes fail
MAX_CHECKED = 100_000  # files remembered as ending on a whole line

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
        self._files: OrderedDict[str, int] = OrderedDict()  # descriptors; before anything can fail
        self._checked: set[str] = set()  # files whose last line is known to be whole
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._prefix = os.path.join(self.log_dir, "engine-")
        self._day, self._day_name = -1, ""
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
        path = self._path(record.symbol, record.created)
        try:
            line = (self.format(record) + "\n").encode()
            if os.write(self._descriptor(path), line) < len(line):
                raise OSError(errno.ENOSPC, "the line was written in part")
        except OSError as exc:
            self._write_failed(path, exc)
        except Exception:
            self.handleError(record)
        else:
            if self._failing_since is not None:
                self._written_while_failing()

    def _path(self, symbol: str, created: float) -> str:
        """``log_path`` as a string, the day's name made once a day, not once a line."""
        day = int(created // 86400)
        if day != self._day:
            self._day, self._day_name = day, time.strftime("%Y%m%d", time.gmtime(created))
        return f"{self._prefix}{symbol}-{self._day_name}.jsonl"

    def _written_while_failing(self) -> None:
        """Say logging resumed, once the disk has room again: a nearly full disk still
        takes a line now and then (the free end of a file's last block)."""
        if not _has_room(self.log_dir):
            self._retry_at = self.clock() + RETRY_AFTER
            return
        lost, self._failing_since = self.lost - self._failing_since, None
        log.warning("Engine logs are written again in %s: %d lines lost", self.log_dir, lost)

    def _write_failed(self, path: str, exc: OSError) -> None:
        """Drop the line and the file (its buffer may hold a part of the line); say so once."""
        self.lost += 1
        self._checked.discard(path)  # the next line starts on a line of its own
        descriptor = self._files.pop(path, None)
        if descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(descriptor)
        self._retry_at = self.clock() + RETRY_AFTER
        if self._failing_since is None:
            self._failing_since = self.lost - 1
            log.error(
                "Engine logs cannot be written (%s: %s): lines are dropped until it works again",
                path,
                exc.strerror or exc,
            )

    def _descriptor(self, path: str) -> int:
        """The file's descriptor, opened for appending. Plain descriptors, not file objects:
        ten thousand engines take turns, so a line often reopens its file, and a file
        object costs several times the system calls' own price to build."""
        descriptor = self._files.get(path)
        if descriptor is not None:
            self._files.move_to_end(path)
            return descriptor
        if len(self._files) >= self.max_open:
            _, oldest = self._files.popitem(last=False)
            os.close(oldest)
        descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._files[path] = descriptor
        if path not in self._checked:  # once per file, and again after a failed write
            if _ends_mid_line(descriptor):
                os.write(descriptor, b"\n")  # a line cut short by a full disk stays alone
            if len(self._checked) >= MAX_CHECKED:
                self._checked.clear()
            self._checked.add(path)
        return descriptor

    def close(self) -> None:
        for descriptor in self._files.values():
            with contextlib.suppress(OSError):
                os.close(descriptor)
        self._files.clear()
        super().close()


def _has_room(log_dir: Path, needed: int = 64 * 1024) -> bool:
    try:
        stats = os.statvfs(log_dir)
    except OSError:
        return True  # no way to tell: a write that worked is the best sign there is
    return stats.f_bavail * stats.f_frsize >= needed


def _ends_mid_line(descriptor: int) -> bool:
    size = os.fstat(descriptor).st_size
    return bool(size) and os.pread(descriptor, 1, size - 1) != b"\n"


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
