"""Per-connection limits of the dashboard's websocket: a token bucket for the frames a client
sends, and a look at what daphne holds for the connection (frames in, bytes out)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any


class TokenBucket:
    """Up to ``burst`` tokens, refilled at ``rate`` a second; a frame takes one or more."""

    def __init__(
        self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.at = clock()

    def has(self, cost: float = 1.0) -> bool:
        """Whether ``cost`` tokens are there now, taking none."""
        now = self.clock()
        return min(self.burst, self.tokens + (now - self.at) * self.rate) >= cost

    def take(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many; say whether they were there."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


class DaphneConnection:
    """The daphne side of one websocket: what its client has not read yet, the frames it
    sent that the consumer has not taken yet, and a way to stop reading them.

    ASGI has no backpressure: daphne's ``send`` never waits (django/daphne#170), so what a
    client does not read piles up in the Twisted transport's write buffer; and every frame
    a client sends is parsed and queued for the consumer, however fast it comes.
    """

    # Bytes read from the client at a time (Twisted's default is 64 KB): a read is parsed
    # into frames in one go, holding up the event loop, so a flooder's read must be small.
    READ_SIZE = 4096

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.transport.bufferSize = self.READ_SIZE

    def backlog(self) -> int:
        """Bytes in the transport's write buffers, not yet handed to the kernel."""
        pending = len(self.transport.dataBuffer) - getattr(self.transport, "offset", 0)
        return pending + getattr(self.transport, "_tempDataLen", 0)

    def unread_frames(self) -> int:
        """Frames received and queued for the consumer, not taken yet."""
        queue = getattr(self.protocol, "application_queue", None)
        return queue.qsize() if queue is not None else 0

    def stop_reading(self) -> None:
        """Read nothing more from this client for now: TCP pushes back on a flooder."""
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()


def daphne_connection(send: Any) -> DaphneConnection | None:
    """The daphne connection behind an ASGI ``send``, or None under another server.

    Under daphne ``send`` is ``partial(server.handle_reply, protocol)``, wrapped by channels'
    session middleware (whose wrapper keeps it as ``real_send``).
    """
    for _ in range(4):
        if isinstance(send, functools.partial):
            protocol = send.args[0] if send.args else None
            transport = getattr(protocol, "transport", None)
            if transport is None or not hasattr(transport, "dataBuffer"):
                return None
            return DaphneConnection(protocol)
        send = getattr(getattr(send, "__self__", None), "real_send", None)
    return None
