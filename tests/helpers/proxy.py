"""A TCP proxy on loopback between one process and a server, that a test can cut and
restore: the network failure of one client, the others untouched."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

from engines_app.testing import free_port


class TcpProxy:
    """Forward ``127.0.0.1:port`` to ``target``, on an event loop in a thread of its own.

    ``cut()`` resets every open connection and closes the port (new connections are
    refused); ``restore()`` listens on the same port again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def cut(self) -> None:
        """Reset every connection through the proxy and refuse new ones."""
        self._call(self._cut())

    def restore(self) -> None:
        """Accept and forward connections again, on the same port."""
        self._call(self._listen())

    @property
    def open_connections(self) -> int:
        return len(self._transports) // 2

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._forward, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()  # an RST, as a dropped link or a killed server gives
        self._transports.clear()

    async def _forward(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter):
        self.accepted += 1
        try:
            server_in, server_out = await asyncio.open_connection(*self.target)
        except OSError:
            client_out.transport.abort()
            return
        pair = {client_out.transport, server_out.transport}
        self._transports |= pair
        await asyncio.gather(_pump(client_in, server_out), _pump(server_in, client_out))
        self._transports -= pair


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy ``source`` to ``sink`` until either end closes; then close both ways."""
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    sink.close()
