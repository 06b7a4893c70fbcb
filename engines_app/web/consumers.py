"""The dashboard's websocket: a snapshot on connect, then the broadcaster's changes; and
operators' commands, carried out by the same services as the admin and the API."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.http.cookie import parse_cookie

from ..models import CONTROL_PERMISSION
from ..runtime.engine import symbol_problem
from ..selectors import dashboard
from ..services import engines as services
from .broadcaster import FRAME_ROWS, Broadcaster, broadcaster
from .throttle import TokenBucket, daphne_connection

log = logging.getLogger("levipanel.web")

ACTIONS = {
    "start": services.engine_start,
    "stop": services.engine_stop,
    "restart": services.engine_restart,
}
MAX_FRAME = 4096
# Frames a client may send: FRAME_RATE a second, FRAME_BURST at once; a snapshot reads every
# engine, so it counts SNAPSHOT_COST frames.
FRAME_RATE = 10.0
FRAME_BURST = 20.0
SNAPSHOT_COST = 5.0
# Frames refused for going too fast, answered with an error frame: PATIENCE at once, one more
# a second; past that the connection is closed with FLOODING.
PATIENCE = 20.0
# What daphne may hold for a client that does not read (a snapshot of 10,000 engines is about
# 3.2 MB); past it the connection is closed with NOT_READING.
MAX_BACKLOG = 8 * 1024 * 1024
SNAPSHOT_ROWS = FRAME_ROWS  # engine rows per snapshot frame
# Connections one user may open in this web process: CONNECT_BURST at once, one more every
# 1/CONNECT_RATE seconds; each costs a snapshot, so reconnecting is no way around the bucket.
CONNECT_RATE = 0.5
CONNECT_BURST = 5.0
# How long a snapshot waits for the broadcaster's first look (the database may be away).
SNAPSHOT_WAIT = 10.0
UNAVAILABLE = 1013  # close code "try again later": no snapshot to send yet
REFUSED = 4403  # close code for a connection without a logged-in user
FLOODING = 4429  # close code for a connection that kept sending too fast
NOT_READING = 4408  # close code for a client that does not read what it is sent


class CommandRefused(Exception):
    pass


_connects: dict[int, TokenBucket] = {}  # user id -> this process's bucket of connections
_session_users: dict[str, int] = {}  # session key -> user id, of sessions that connected
MAX_SESSIONS = 10_000  # sessions remembered; the oldest is forgotten first


class ConnectGate:
    """In front of the session and auth middleware: a handshake from a session whose user
    has no connection left in the bucket is refused here (accepted and closed with
    FLOODING, as the consumer does), before the session and the user are read from the
    database. A user reconnecting in a loop then costs the web process no query at all,
    and other users' requests do not wait behind theirs. A session seen for the first time
    goes on to the consumer, which decides and takes the token."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        user_id = _session_users.get(_session_key(scope))
        connects = _connects.get(user_id) if user_id is not None else None
        if connects is not None and not connects.has():
            if (await receive())["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": FLOODING})
            return None
        return await self.inner(scope, receive, send)


def _session_key(scope: dict) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            cookies = parse_cookie(value.decode("latin1"))
            return cookies.get(settings.SESSION_COOKIE_NAME, "")
    return ""


def _remember_session(scope: dict, user_id: int) -> None:
    session = scope.get("session")
    key = getattr(session, "session_key", None)
    if not key:
        return
    _session_users.pop(key, None)
    if len(_session_users) >= MAX_SESSIONS:
        del _session_users[next(iter(_session_users))]
    _session_users[key] = user_id


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    """Frames in: ``{"type": "snapshot"}``, ``{"type": "command", "action", "symbol", "id"}``,
    ``{"type": "ping"}``. Frames out: ``snapshot`` (and ``snapshot_more`` while it says
    ``more``), ``changes``, ``command``, ``error``, ``pong``."""

    # The broadcaster's in-memory layer: no Redis between this process's broadcaster and its
    # pages, so a Redis outage does not end the consumer (and close the page's socket).
    channel_layer_alias = settings.DASHBOARD_CHANNEL_LAYER
    broadcaster: Broadcaster | None = None
    clock = staticmethod(time.monotonic)
    closing = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=REFUSED)
            return
        connects = _connects.setdefault(
            user.pk, TokenBucket(rate=CONNECT_RATE, burst=CONNECT_BURST, clock=self.clock)
        )
        _remember_session(self.scope, user.pk)
        if not connects.take():
            await self.accept()  # accepted to say why: a refused handshake has no code
            await self.close(code=FLOODING)
            return
        self.frames = TokenBucket(rate=FRAME_RATE, burst=FRAME_BURST, clock=self.clock)
        self.patience = TokenBucket(rate=1.0, burst=PATIENCE, clock=self.clock)
        self.connection = daphne_connection(self.base_send)
        if self.connection is not None:
            # Frames sent before the consumer can take them would only pile up in daphne.
            self.connection.stop_reading()
        self.broadcaster = broadcaster()
        await self.channel_layer.group_add(self.broadcaster.group, self.channel_name)
        await self.accept()
        self.broadcaster.subscribe()
        await self.send_snapshot()
        if self.connection is not None:
            self.connection.resume_reading()

    async def disconnect(self, code: int) -> None:
        if self.broadcaster is not None:
            self.broadcaster.unsubscribe()
            await self.channel_layer.group_discard(self.broadcaster.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        """Answer a frame that is not a small JSON object with an error frame, and stay up;
        throttle every frame, malformed ones included."""
        if self.closing:
            return
        content, problem = _parse(text_data)
        if not await self.within_limits(content):
            return
        if problem:
            await self.send_error(problem)
            return
        await self.receive_json(content)

    async def within_limits(self, content: dict[str, Any] | None) -> bool:
        """Take the frame's tokens; answer a frame over the limit with an error frame, and
        close a connection that keeps sending too fast."""
        snapshot = content is not None and content.get("type") == "snapshot"
        if self.connection and self.connection.unread_frames() > FRAME_BURST + PATIENCE:
            # More frames waiting than the bucket could ever take: a flood, already.
            await self.close_for(FLOODING, "sent more frames than it may")
        if self.frames.take(SNAPSHOT_COST if snapshot else 1.0):
            return True
        if self.patience.take():
            message = (
                f"too many frames: at most {FRAME_RATE:g} a second "
                f"(a snapshot counts {SNAPSHOT_COST:g}); slow down"
            )
            await self.send_error(message, content.get("id") if content else None)
        else:
            await self.close_for(FLOODING, "kept sending frames too fast")
        return False

    async def close_for(self, code: int, why: str) -> None:
        """Close with ``code`` and end this consumer at once, reading nothing more: the
        frames a flooder queued are dropped, and daphne drops the connection a second
        later if the client does not answer the close."""
        user = self.scope["user"]
        log.warning("websocket closed: %s user=%s code=%s", why, user.get_username(), code)
        self.closing = True
        if self.connection is not None:
            self.connection.stop_reading()
        await self.close(code=code)
        await self.disconnect(code)
        raise StopConsumer()

    async def send_json(self, content: dict[str, Any], close: bool = False) -> None:
        await self.send_text(await self.encode_json(content), close=close)

    async def send_text(self, text: str, close: bool = False) -> None:
        """Send, unless what the client has not read yet is over ``MAX_BACKLOG``: then close
        the connection instead of buffering without bound. (Every frame goes out here.)"""
        if self.closing:
            return
        if self.connection is not None and self.connection.backlog() > MAX_BACKLOG:
            await self.close_for(NOT_READING, "the client does not read")
            return
        await self.send(text_data=text, close=close)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        kind = content.get("type")
        if kind == "snapshot":
            await self.send_snapshot()
        elif kind == "command":
            await self.command(content)
        elif kind == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_error(f"unknown frame type {kind!r}", content.get("id"))

    async def send_snapshot(self) -> None:
        """The broadcaster's rows as last sent, numbered: its next frames apply to them."""
        try:
            await asyncio.wait_for(self.broadcaster.ready.wait(), SNAPSHOT_WAIT)
        except TimeoutError:
            await self.close(code=UNAVAILABLE)  # the page tries again
            return
        seq, rows, flushed_at = self.broadcaster.state()
        data = await database_sync_to_async(dashboard.snapshot)(rows, flushed_at)
        can_control = await self.can_control()
        parts = [rows[i : i + SNAPSHOT_ROWS] for i in range(0, len(rows), SNAPSHOT_ROWS)] or [[]]
        frame = {"type": "snapshot", "seq": seq, "can_control": can_control, **data}
        for index, part in enumerate(parts):
            if index:
                frame = {"type": "snapshot_more", "seq": seq}
            frame |= {"engines": part, "more": index < len(parts) - 1}
            # Some MB at 10,000 engines: encoded off the event loop.
            await self.send_text(await asyncio.to_thread(json.dumps, frame))

    async def command(self, content: dict[str, Any]) -> None:
        client_id = content.get("id")
        if not _valid_id(client_id):
            await self.send_error("id must be a string of at most 64 characters or an integer")
            return
        try:
            command = await self.carry_out(content.get("action"), content.get("symbol"))
        except CommandRefused as exc:
            await self.send_error(str(exc), client_id)
            return
        await self.send_json({"type": "command", "id": client_id, "command": command})

    async def carry_out(self, action: Any, symbol: Any) -> dict[str, Any]:
        if not isinstance(action, str) or action not in ACTIONS:
            raise CommandRefused("action must be one of: " + ", ".join(ACTIONS))
        if symbol is not None and not isinstance(symbol, str):
            raise CommandRefused("symbol must be a string, like BTCUSDT")
        if problem := symbol_problem(symbol):
            raise CommandRefused(f"symbol {symbol!r}: {problem}")
        if not await self.can_control():
            raise CommandRefused("you do not have permission to control engines")
        try:
            return await _call_service(action, symbol, self.scope["user"].pk)
        except services.EngineNotFound as exc:
            raise CommandRefused(str(exc)) from exc

    async def can_control(self) -> bool:
        return await _has_permission(self.scope["user"].pk, CONTROL_PERMISSION)

    async def send_error(self, message: str, client_id: Any = None) -> None:
        # Echo only a valid id: NaN or a huge value would make the frame unreadable.
        echo = client_id if _valid_id(client_id) else None
        await self.send_json({"type": "error", "id": echo, "message": message})

    async def engines_changed(self, event: dict[str, Any]) -> None:
        """A broadcaster message: forward it as a ``changes`` frame."""
        await self.send_json({**event, "type": "changes"})


def _parse(text_data: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """A frame's JSON object, or what is wrong with it."""
    if text_data is None or len(text_data) > MAX_FRAME:
        return None, f"send a JSON text frame of at most {MAX_FRAME} bytes"
    try:
        content = json.loads(text_data)
    except (ValueError, RecursionError):  # deep nesting raises RecursionError
        return None, "the frame is not valid JSON"
    if not isinstance(content, dict):
        return None, "the frame must be a JSON object"
    return content, None


def _valid_id(client_id: Any) -> bool:
    """A command's id as the page sends it: a short string or an integer (or none)."""
    if isinstance(client_id, str):
        return len(client_id) <= 64
    return client_id is None or (isinstance(client_id, int) and abs(client_id) < 2**53)


@database_sync_to_async
def _has_permission(user_id: int, permission: str) -> bool:
    # A fresh user each time: a permission taken away applies to open pages too.
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    return user is not None and user.has_perm(permission)


@database_sync_to_async
def _call_service(action: str, symbol: str, user_id: int) -> dict[str, Any]:
    user = get_user_model().objects.get(pk=user_id)
    command = ACTIONS[action](symbol=symbol, user=user, source="dashboard")
    return dashboard.command_row(command)
