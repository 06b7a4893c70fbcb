"""Push what the database says to the dashboards of this web process.

The in-memory channel layer does not cross processes, so the database is the bus: one
broadcaster per web process (per event loop) reads the engine and command rows changed
since it last looked (and those whose lease ran out since then: their status is now
``unknown`` though nothing wrote them), a few times a second, and sends them to its
consumers' group — one query per web process, not one per browser. The group lives on the
in-memory ``DASHBOARD_CHANNEL_LAYER``: broadcaster and consumers share the process, so
Redis being away never stops the pushes. With Redis, the runner also sends a hint after each
write (``send_hint``) and the broadcaster looks at once. A hint is only a wake-up: the rows
read from the database are what is delivered.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from ..models import Engine
from ..runtime.ratelimit import LogLimiter
from ..selectors import dashboard
from ..selectors.engines import AT_REST, runners_seen
from ..selectors.runners import runners_list

log = logging.getLogger("levipanel.dashboard")
# With Redis away these would be a line a poll: one per kind per 10 s, and a count.
LOG_LIMITER = LogLimiter(limit=1, window=10.0)

HINT_GROUP = "engines-hints"
# A writer stamps ``updated_at`` before it commits, so a row can become visible with a
# stamp older than the last look: look back this far and skip the versions already sent.
OVERLAP = timedelta(seconds=5)
HINT_GROUP_RENEW = 3600.0  # channels_redis forgets group members after a day

_broadcasters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Broadcaster] = (
    weakref.WeakKeyDictionary()
)


def crosses_processes(layer: BaseChannelLayer | None) -> bool:
    return layer is not None and not isinstance(layer, InMemoryChannelLayer)


def broadcaster() -> Broadcaster:
    """This web process's broadcaster (one per event loop)."""
    loop = asyncio.get_running_loop()
    found = _broadcasters.get(loop)
    if found is None:
        found = _broadcasters[loop] = Broadcaster(
            get_channel_layer(settings.DASHBOARD_CHANNEL_LAYER),
            hints=get_channel_layer(),
            interval=settings.LEVIPANEL_PUSH_INTERVAL,
        )
    return found


class Broadcaster:
    """Send the rows changed since the last look to ``group`` on ``layer``, numbered by
    ``seq``; look at once on a hint from ``hints`` when it crosses processes.

    It runs while at least one consumer is subscribed."""

    def __init__(
        self,
        layer: BaseChannelLayer,
        *,
        interval: float,
        hints: BaseChannelLayer | None = None,
    ) -> None:
        self.layer = layer
        self.hints = hints
        self.interval = interval
        self.group = f"engines.{uuid.uuid4().hex}"
        self.seq = 0
        self.subscribers = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._since = timezone.now() - OVERLAP
        self._expired_since = timezone.now()
        self._versions: dict[str, float] = {}
        self._commands: dict[int, float | None] = {}
        self._runners: list[dict[str, Any]] = []  # as last sent, live ones without last_seen

    def subscribe(self) -> None:
        self.subscribers += 1
        if self._task is None or self._task.done():
            self._since = timezone.now() - OVERLAP
            self._expired_since = timezone.now()
            self._task = asyncio.create_task(self.run(), name="dashboard-broadcaster")

    def unsubscribe(self) -> None:
        self.subscribers = max(0, self.subscribers - 1)
        if self.subscribers == 0 and self._task is not None:
            self._task.cancel()
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        hints = None
        if crosses_processes(self.hints):
            hints = asyncio.create_task(self._listen_for_hints(), name="dashboard-hints")
        try:
            while True:
                try:
                    await self.poll()
                except Exception:  # one bad look must not end the pushes of every page
                    LOG_LIMITER.log(
                        log, logging.ERROR, "poll", "dashboard broadcast failed", exc_info=True
                    )
                await self._sleep()
        finally:
            if hints is not None:
                hints.cancel()

    async def poll(self) -> None:
        try:
            message = await database_sync_to_async(self.changes)()
        except DatabaseError as exc:
            log.warning("dashboard poll failed: %s", exc)
            await database_sync_to_async(close_old_connections)()
            return
        if message is not None:
            self.seq += 1
            await self.layer.group_send(
                self.group, {"type": "engines.changed", "seq": self.seq, **message}
            )

    def changes(self) -> dict[str, Any] | None:
        """The engine, command and runner rows not sent yet, or None when nothing changed."""
        now = timezone.now()
        since, self._since = self._since, now - OVERLAP
        stamps = Engine.objects.filter(updated_at__gte=since).values_list("symbol", "updated_at")
        changed = [s for s, at in stamps if self._versions.get(s) != at.timestamp()]
        changed += self._expired(now)
        engines = list(Engine.objects.filter(symbol__in=changed)) if changed else []
        commands, removed = self._changed_commands(since)
        runners = self._changed_runners()
        if not (engines or commands or removed or runners is not None):
            return None
        epoch = now.timestamp()
        seen = runners_seen() if engines else {}
        rows = [dashboard.engine_row(engine, epoch, seen) for engine in engines]
        for row in rows:
            self._versions[row["symbol"]] = row["version"]
        return {
            "now": epoch,
            "engines": rows,
            "commands": commands,
            "removed": removed,
            "runners": runners,
        }

    def _expired(self, now: datetime) -> list[str]:
        """Engines whose lease ran out since the last look: nothing wrote them (their runner
        may be dead), yet they are ``unknown`` now."""
        rows = Engine.objects.filter(
            lease_expires_at__gt=self._expired_since, lease_expires_at__lte=now
        )
        symbols = list(rows.exclude(status__in=AT_REST).values_list("symbol", flat=True))
        self._expired_since = now  # only once read: a failed look is looked at again
        return symbols

    def _changed_runners(self) -> list[dict[str, Any]] | None:
        """Every runner when one joined, left, went silent or changed what it holds; None
        otherwise. A live runner's ``last_seen`` moves every flush: the page needs no step."""
        runners = runners_list()
        key = [{**row, "last_seen": None} if row["live"] else row for row in runners]
        if key == self._runners:
            return None
        self._runners = key
        return runners

    def _changed_commands(self, since: datetime) -> tuple[list[dict[str, Any]], list[str]]:
        commands, removed = [], []
        for command in dashboard.changed_commands(since):
            acked = command.acked_at.timestamp() if command.acked_at else None
            if command.pk in self._commands and self._commands[command.pk] == acked:
                continue
            self._commands[command.pk] = acked
            commands.append(dashboard.command_row(command))
            if command.action == command.Action.REMOVE and command.engine_id is None:
                removed.append(command.symbol)
                self._versions.pop(command.symbol, None)
        if len(self._commands) > 10_000:
            self._commands = dict(list(self._commands.items())[-5_000:])
        return commands, removed

    async def _sleep(self) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), self.interval)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _listen_for_hints(self) -> None:
        """Wake up on the runner's hints; without them the periodic look still works."""
        channel = None
        while True:
            try:
                if channel is None:
                    channel = await self.hints.new_channel()
                    await self.hints.group_add(HINT_GROUP, channel)
                try:
                    await asyncio.wait_for(self.hints.receive(channel), HINT_GROUP_RENEW)
                    self.wake()
                except TimeoutError:
                    await self.hints.group_add(HINT_GROUP, channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep polling, try again later
                log.warning("dashboard hints unavailable: %s", exc)
                channel = None
                await asyncio.sleep(1.0)


def send_hint(sender: Any, **kwargs: Any) -> None:
    """Runner side: after a write, wake every web process's broadcaster through Redis."""
    layer = get_channel_layer()
    if not crosses_processes(layer):
        return
    try:
        async_to_sync(_send_hint)(layer)
    except Exception as exc:  # a hint is optional, the runner's work is not
        LOG_LIMITER.log(log, logging.WARNING, "hint", "dashboard hint not sent: %s", exc)


async def _send_hint(layer: BaseChannelLayer) -> None:
    await asyncio.wait_for(layer.group_send(HINT_GROUP, {"type": "engines.hint"}), 0.5)
