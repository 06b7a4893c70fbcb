"""One middleware of the project's own: the last one, so that the others run as one block."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase


class SyncMiddlewareChain:
    """Last in ``MIDDLEWARE``: every middleware before it runs synchronously.

    Under ASGI, Django runs a middleware that can work either way in the mode of the one
    inside it. Django's own (``MiddlewareMixin``) run each hook through ``sync_to_async``
    in async mode: a hop to a thread and back, thirteen a request here. On 2 cores those
    hops were 4 of the 7 ms of server time a request that reads nothing took
    (``docs/benchmarks.md``). Being synchronous only, this turns the chain synchronous: it
    is entered once for the whole request, and only the view is a hop away. It passes
    every request on untouched."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)
