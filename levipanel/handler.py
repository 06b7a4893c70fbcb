"""Django's ASGI handler, running each request's sync part in one go on a pooled thread.

Django's own ``ASGIHandler`` costs a busy web process about half its time
(``docs/benchmarks.md``), in two ways:

- **A thread made for each request.** It enters asgiref's ``ThreadSensitiveContext`` for
  each request, which starts a thread for it and joins it afterwards from yet another
  thread. The event loop waits for each start, and a new thread needs the interpreter
  lock, which busy request threads hold for up to a switch interval (5 ms) at a time.
- **Trips between the loop and that thread.** Under ASGI, Django loads the middleware in
  async mode: the innermost handler is async, so a sync middleware chain calls it back on
  the loop, which then hands the view to the thread again.

``PooledThreadsASGIHandler`` loads the middleware in sync mode, as a WSGI server does, and
runs ``get_response`` (the whole chain and the view) as one call on the request's thread.
The thread is the request's alone while it runs, as asgiref's
``ThreadSensitiveContext(executor=...)`` (its public way to give one) guarantees; it comes
from ``RequestThreads``, was started by an earlier request, and goes back once everything
the request handed it has run, as a WSGI server's threads serve one request after
another. The database connections are the one thing Django keeps per thread; it closes
them at the end of each request (``request_finished``, ``CONN_MAX_AGE`` 0) on the
request's thread, as under WSGI, and the pool does when a cancelled request skipped that.
Like Django's own thread a request, the pool has no upper bound: each busy thread may hold
a database connection.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponseBase

KEPT = 16  # idle threads kept for the next requests; more are made while more are busy


class RequestThread(ThreadPoolExecutor):
    """One thread that runs one request's sync code at a time, in the order given."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="levipanel-request")
        self.last: Future | None = None  # the latest work handed to it

    def submit(self, fn, /, *args, **kwargs) -> Future:
        self.last = super().submit(fn, *args, **kwargs)
        return self.last


class RequestThreads:
    """The pool: ``take`` a thread for a request, ``give_back`` once the request is done.

    A thread is taken again only once all it was handed has run. A request cancelled
    while its view runs (its client went away, then daphne gave up on it) leaves the view
    running, and may leave Django's ``request_finished`` unrun: such a thread is given
    back by a last job of the pool's own, queued behind everything else it was handed,
    which closes the thread's database connections as ``request_finished`` would."""

    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self._idle: deque[RequestThread] = deque()
        self._lock = threading.Lock()

    def take(self) -> RequestThread:
        with self._lock:
            if self._idle:
                return self._idle.pop()  # the one used last
        return RequestThread()

    def give_back(self, thread: RequestThread) -> None:
        last = thread.last
        if last is None or (last.done() and not last.cancelled()):
            # It ran last of all it was handed, and the one worker runs them in order.
            self._idle_again(thread)
            return
        # Cancelled before it ran, or still running: not through ``thread.submit``, so
        # nothing can cancel this one.
        ThreadPoolExecutor.submit(thread, self._end_request, thread)

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        """Let the idle threads end."""
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for thread in idle:
            thread.shutdown(wait=False)

    def _end_request(self, thread: RequestThread) -> None:
        close_old_connections()
        self._idle_again(thread)

    def _idle_again(self, thread: RequestThread) -> None:
        with self._lock:
            if len(self._idle) < self.kept:
                self._idle.append(thread)
                return
        thread.shutdown(wait=False)  # enough are idle: this one ends


class PooledThreadsASGIHandler(ASGIHandler):
    """``ASGIHandler`` with the middleware in sync mode, each request's sync part run as
    one call on a thread from ``RequestThreads``."""

    def __init__(self) -> None:
        self.threads = RequestThreads()
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response)(request)

    async def __call__(self, scope, receive, send) -> None:
        thread = self.threads.take()
        try:
            # Django's own ThreadSensitiveContext, inside this one, leaves it be.
            async with ThreadSensitiveContext(executor=thread):
                await super().__call__(scope, receive, send)
        finally:
            self.threads.give_back(thread)


def get_asgi_application() -> PooledThreadsASGIHandler:
    """``django.core.asgi.get_asgi_application``, with this module's handler."""
    import django

    django.setup(set_prefix=False)
    return PooledThreadsASGIHandler()
