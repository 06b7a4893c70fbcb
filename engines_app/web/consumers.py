"""The dashboard's websocket: a snapshot on connect, then the broadcaster's changes; and
operators' commands, carried out by the same services as the admin and the API."""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth import get_user_model

from ..models import CONTROL_PERMISSION
from ..runtime.engine import symbol_problem
from ..selectors import dashboard
from ..services import engines as services
from .broadcaster import Broadcaster, broadcaster

ACTIONS = {
    "start": services.engine_start,
    "stop": services.engine_stop,
    "restart": services.engine_restart,
}
MAX_FRAME = 4096
REFUSED = 4403  # close code for a connection without a logged-in user


class CommandRefused(Exception):
    pass


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    """Frames in: ``{"type": "snapshot"}``, ``{"type": "command", "action", "symbol", "id"}``,
    ``{"type": "ping"}``. Frames out: ``snapshot``, ``changes``, ``command``, ``error``,
    ``pong``."""

    broadcaster: Broadcaster | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=REFUSED)
            return
        self.broadcaster = broadcaster()
        await self.channel_layer.group_add(self.broadcaster.group, self.channel_name)
        await self.accept()
        self.broadcaster.subscribe()
        await self.send_snapshot()

    async def disconnect(self, code: int) -> None:
        if self.broadcaster is not None:
            self.broadcaster.unsubscribe()
            await self.channel_layer.group_discard(self.broadcaster.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        """Answer a frame that is not a small JSON object with an error frame, and stay up."""
        if text_data is None or len(text_data) > MAX_FRAME:
            await self.send_error(f"send a JSON text frame of at most {MAX_FRAME} bytes")
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):  # deep nesting raises RecursionError
            await self.send_error("the frame is not valid JSON")
            return
        if not isinstance(content, dict):
            await self.send_error("the frame must be a JSON object")
            return
        await self.receive_json(content)

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
        seq = self.broadcaster.seq  # changes after this one may be newer than the snapshot
        data = await database_sync_to_async(dashboard.snapshot)()
        can_control = await self.can_control()
        await self.send_json({"type": "snapshot", "seq": seq, "can_control": can_control, **data})

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
