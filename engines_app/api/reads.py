"""The API's hot reads on threads of their own, each with one database connection kept open.

Django runs a sync view on a thread made for its request, and that thread opens a database
connection and closes it at the end: at about a millisecond each, more than the status
read itself. The status views hand their reads to this process's two reader threads
instead, whose connections stay open between requests, and wait for the answer:

- ``read``: the short ones (the token check, one engine's status), one after another;
- ``read_fleet``: the fleet-sized ones (the status list: its snapshot, built again when
  the data changed, and filtered pages), so that building a list of 10,000 engines never
  holds up a read of one.

The views stay sync and wait on their own thread. An async view would be awaited on the
event loop, and each read's answer would wait there behind whatever else the loop has to
do (a flood of websocket frames): a round trip through a busy loop per read.

A connection that has gone bad (the database restarted, the network dropped) fails one
read; it is then closed, and a read that failed on a connection kept from before is tried
once more on a fresh one, so a client never sees the old connection's failure.

A test inside a transaction makes the reader threads read through the test's connection
(``sharing``), as Django's live test server does, or they would not see its rows.

A kept connection idle for longer than ``IDLE_CLOSE`` is closed before its next read: a
firewall or NAT may have dropped it without a word, and a read on it would hang.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper

T = TypeVar("T")

IDLE_CLOSE = 60.0  # seconds

_SHORT, _FLEET = "levipanel-api-reads", "levipanel-api-fleet-reads"  # the threads' names
_short = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_SHORT)
_fleet = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_FLEET)
_last = threading.local()  # on each reader thread: when its connection last served a read


def read(function: Callable[..., T], *args) -> T:
    """``function(*args)`` on the short reads' thread; its result, once it is done."""
    return _on(_short, _SHORT, function, *args)


def read_fleet(function: Callable[..., T], *args) -> T:
    """``function(*args)`` on the fleet-sized reads' thread; its result, once it is done."""
    return _on(_fleet, _FLEET, function, *args)


def _on(executor: ThreadPoolExecutor, name: str, function: Callable[..., T], *args) -> T:
    if threading.current_thread().name.startswith(f"{name}_"):
        return _run(function, *args)  # a read within a read: waiting would never end
    return executor.submit(_run, function, *args).result()


def _run(function: Callable[..., T], *args) -> T:
    own = not connection.allow_thread_sharing  # not a test's connection (``sharing``)
    if own and time.monotonic() - getattr(_last, "read", 0.0) > IDLE_CLOSE:
        connection.close()
    _last.read = time.monotonic()
    reused = connection.connection is not None  # opened by an earlier read
    try:
        result = function(*args)
    except DatabaseError:
        if not own or connection.in_atomic_block or not _broken():
            raise
        connection.close()
        if not reused:
            raise
        result = function(*args)  # once, on a fresh connection
    return result


def _broken() -> bool:
    """Whether the connection can no longer serve (Django's own health check)."""
    return connection.connection is None or not connection.is_usable()


@contextlib.contextmanager
def sharing(shared: BaseDatabaseWrapper) -> Iterator[None]:
    """While inside, the reader threads read through ``shared``, another thread's
    connection, and so see that thread's open transaction."""
    shared_with: list[ThreadPoolExecutor] = []
    try:
        for executor in (_short, _fleet):
            shared.inc_thread_sharing()
            shared_with.append(executor)
            executor.submit(_read_through, shared).result()
        yield
    finally:
        for executor in shared_with:
            executor.submit(_read_through, None).result()
            shared.dec_thread_sharing()


def _read_through(shared: BaseDatabaseWrapper | None) -> None:
    if shared is None:
        del connections[DEFAULT_DB_ALIAS]  # the next read opens a connection of its own
        return
    connection.close()
    connections[DEFAULT_DB_ALIAS] = shared
