"""The web process's ASGI handler (``levipanel/handler.py``): each request's sync part is one
call on a thread of its own, taken from a pool and given back once all it ran is done.
Driven through the ASGI protocol, in this process, with views of this module's own."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from contextlib import suppress

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.http import JsonResponse
from django.urls import path
from django.utils.deprecation import MiddlewareMixin

from engines_app.models import Engine
from levipanel.handler import PooledThreadsASGIHandler

entered = threading.Event()  # the waiting view has started
release = threading.Event()  # ... and may end
held_by: list[int] = []  # the thread it waits on


def thread_view(request):
    return JsonResponse({"thread": threading.get_ident(), "name": threading.current_thread().name})


def waiting_view(request):
    held_by.append(threading.get_ident())
    entered.set()
    release.wait(10)
    return JsonResponse({"thread": threading.get_ident()})


def database_view(request):
    return JsonResponse(
        {
            "thread": threading.get_ident(),
            "engines": Engine.objects.count(),
            "open": connection.connection is not None,
        }
    )


def database_then_wait_view(request):
    Engine.objects.count()
    return waiting_view(request)


urlpatterns = [
    path("thread", thread_view),
    path("wait", waiting_view),
    path("database", database_view),
    path("database-wait", database_then_wait_view),
]


@pytest.fixture
def handler(settings):
    settings.ROOT_URLCONF = __name__
    entered.clear()
    release.clear()
    held_by.clear()
    handler = PooledThreadsASGIHandler()
    yield handler
    release.set()
    handler.threads.close()


async def get(app, url: str, gone: asyncio.Event | None = None) -> dict:
    """GET ``url`` through ``app`` as an ASGI server would; the JSON answer. ``gone``: set
    it and the client disconnects."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/{url}",
        "raw_path": f"/{url}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    requested, sent = False, []

    async def receive():
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await (gone or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert start["status"] == 200, (start, body)
    return json.loads(body)


def test_requests_one_after_another_are_served_by_one_started_thread(handler):
    async def three():
        return [await get(handler, "thread") for _ in range(3)]

    answers = asyncio.run(three())
    assert len({answer["thread"] for answer in answers}) == 1, answers
    assert answers[0]["name"].startswith("levipanel-request")
    assert answers[0]["thread"] != threading.get_ident()
    assert handler.threads.idle() == 1


def test_requests_at_the_same_time_each_have_a_thread_of_their_own(handler):
    async def two_at_once():
        waiting = asyncio.create_task(get(handler, "wait"))
        await asyncio.to_thread(entered.wait, 10)
        other = await get(handler, "thread")  # would wait forever behind the first
        release.set()
        return await waiting, other

    first, second = asyncio.run(asyncio.wait_for(two_at_once(), 20))
    assert first["thread"] != second["thread"]
    assert handler.threads.idle() == 2


def test_the_middleware_and_the_view_run_as_one_sync_call(monkeypatch, settings):
    """Loaded in sync mode, as under WSGI: no middleware hook is a hop to a thread and
    back, and nothing goes back to the event loop between the chain and the view."""
    loaded: list[MiddlewareMixin] = []
    init = MiddlewareMixin.__init__

    def record(self, get_response):
        init(self, get_response)
        loaded.append(self)

    monkeypatch.setattr(MiddlewareMixin, "__init__", record)
    handler = PooledThreadsASGIHandler()
    assert len(loaded) >= 6
    assert [type(m).__name__ for m in loaded if m.async_mode] == []
    assert not inspect.iscoroutinefunction(handler._middleware_chain)


def test_a_thread_left_running_by_a_cancelled_request_waits_out_of_the_pool(handler):
    async def scenario():
        waiting = asyncio.create_task(get(handler, "wait"))
        await asyncio.to_thread(entered.wait, 10)
        waiting.cancel()  # as daphne does when the client has gone
        with suppress(asyncio.CancelledError):
            await waiting
        assert handler.threads.idle() == 0  # its view still runs there
        other = await get(handler, "thread")
        assert other["thread"] != held_by[0]
        assert handler.threads.idle() == 1
        release.set()
        deadline = time.monotonic() + 10
        while handler.threads.idle() < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert handler.threads.idle() == 2  # back once its view ended

    asyncio.run(scenario())


def test_a_thread_whose_client_left_waits_out_of_the_pool_until_its_view_ends(handler):
    """The client goes: Django cancels the view's task, and queues ``request_finished``
    behind the view. Daphne then gives up on the request and cancels the app, which
    cancels that queued job before it ran: the thread is still busy."""

    async def scenario():
        gone = asyncio.Event()
        waiting = asyncio.create_task(get(handler, "wait", gone))
        await asyncio.to_thread(entered.wait, 10)
        gone.set()
        await asyncio.sleep(0.2)  # Django has cancelled the view's task and waits
        assert not waiting.done()
        waiting.cancel()
        with suppress(asyncio.CancelledError):
            await waiting
        assert handler.threads.idle() == 0
        other = await get(handler, "thread")
        assert other["thread"] != held_by[0]
        release.set()
        deadline = time.monotonic() + 10
        while handler.threads.idle() < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert handler.threads.idle() == 2

    asyncio.run(scenario())


def test_too_many_idle_threads_are_let_go(handler):
    handler.threads.kept = 1
    first = handler.threads.take()
    second = handler.threads.take()
    handler.threads.give_back(first)
    handler.threads.give_back(second)
    assert handler.threads.idle() == 1 and second._shutdown


@pytest.fixture
def web_connections(monkeypatch):
    """The web process's setting, ``CONN_MAX_AGE`` 0: a runner run in this test process
    before sets it to keep its connection, on the settings every connection shares."""
    monkeypatch.setitem(connections.settings[DEFAULT_DB_ALIAS], "CONN_MAX_AGE", 0)


@pytest.mark.django_db(transaction=True)
def test_a_request_threads_database_connection_is_closed_when_its_request_ends(
    handler, web_connections
):
    async def scenario():
        answer = await get(handler, "database")
        thread = handler.threads.take()  # the one that served it: the last given back
        try:
            ident, still_open = await asyncio.wrap_future(
                thread.submit(lambda: (threading.get_ident(), connection.connection is not None))
            )
            assert ident == answer["thread"]
        finally:
            handler.threads.give_back(thread)
        return answer, still_open

    answer, still_open = asyncio.run(scenario())
    assert answer["open"] is True  # the view had one
    assert still_open is False  # Django closed it at the request's end (CONN_MAX_AGE 0)


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_requests_database_connection_is_closed_by_the_pool(handler, web_connections):
    """Cancelled, the request never sends ``request_finished``: the pool closes what it
    would have."""

    async def scenario():
        waiting = asyncio.create_task(get(handler, "database-wait"))
        await asyncio.to_thread(entered.wait, 10)
        waiting.cancel()
        with suppress(asyncio.CancelledError):
            await waiting
        release.set()
        deadline = time.monotonic() + 10
        while handler.threads.idle() < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        thread = handler.threads.take()
        try:
            return await asyncio.wrap_future(
                thread.submit(lambda: (threading.get_ident(), connection.connection is not None))
            )
        finally:
            handler.threads.give_back(thread)

    ident, still_open = asyncio.run(scenario())
    assert ident == held_by[0] and still_open is False
