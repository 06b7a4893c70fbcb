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
import threading
import uuid
import weakref
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db.models import Q
from django.utils import timezone

from ..models import Engine
from ..runtime import ACTIVE
from ..runtime.ratelimit import LogLimiter
from ..selectors import dashboard
from ..selectors.engines import (
    AT_REST,
    RunnerSeen,
    beat_after,
    beating_runners,
    runners_seen,
)
from ..selectors.runners import runners_list

log = logging.getLogger("levipanel.dashboard")
# With Redis away these would be a line a poll: one per kind per 10 s, and a count.
LOG_LIMITER = LogLimiter(limit=1, window=10.0)

HINT_GROUP = "engines-hints"
# A writer stamps ``updated_at`` before it commits, so a row can become visible with a
# stamp older than the last look: look back this far and skip the versions already sent.
OVERLAP = timedelta(seconds=5)
HINT_GROUP_RENEW = 3600.0
SCAN_EVERY = timedelta(seconds=0.5)
ACTIVE_SHOWN = {str(status) for status in ACTIVE} | {"starting"}  # statuses that beat
# Engine rows per frame: daphne sends no frame over 1 MiB (a whole row is about 330 bytes).
FRAME_ROWS = 2000  # channels_redis forgets group members after a day

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
    """Keep the dashboard rows as last sent, look for what changed, send only that to
    ``group`` on ``layer``, numbered by ``seq``; look at once on a hint from ``hints`` when
    it crosses processes.

    The rows it keeps are the whole fleet as the pages have it: a page's snapshot is taken
    from them (with their ``seq``), so every later frame applies to it exactly. It runs
    while at least one consumer is subscribed; a new run loads the fleet afresh."""

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
        self.ready = asyncio.Event()  # set once the fleet is loaded
        # Written by ``changes`` in a database thread, read by ``state`` in the event loop.
        self._lock = threading.Lock()
        self._loaded = False
        self._rows: dict[str, dict[str, Any]] = {}  # symbol -> page row, as last sent
        self._keys: dict[str, tuple] = {}  # symbol -> what the page shows, raw (row_key)
        self._versions: dict[str, Any] = {}  # symbol -> updated_at last read, raw
        self.flushed_at: float | None = None  # the newest flush of a live runner
        self._since = self._expired_since = self._stale_since = timezone.now()
        self._scanned_at = self._since
        self._commands: dict[int, float | None] = {}
        self._runners: list[dict[str, Any]] = []  # as last sent, live ones without last_seen

    def subscribe(self) -> None:
        self.subscribers += 1
        if self._task is None or self._task.done():
            with self._lock:
                self._loaded = False
            self.ready.clear()
            self._task = asyncio.create_task(self.run(), name="dashboard-broadcaster")

    def unsubscribe(self) -> None:
        self.subscribers = max(0, self.subscribers - 1)
        if self.subscribers == 0 and self._task is not None:
            self._task.cancel()
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    def state(self) -> tuple[int, list[dict[str, Any]], float | None]:
        """``seq``, every row as last sent (by symbol) and ``flushed_at``: a snapshot that
        the frames numbered after ``seq`` apply to."""
        with self._lock:
            rows = [self._rows[symbol] for symbol in sorted(self._rows)]
            return self.seq, rows, self.flushed_at

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
        if self._loaded:
            self.ready.set()
        for frame in frames(message) if message is not None else []:
            await self.layer.group_send(self.group, {"type": "engines.changed", **frame})

    def changes(self) -> dict[str, Any] | None:
        """What changed since the last look, numbered, or None when nothing did. The first
        look loads the fleet and sends nothing (pages take a snapshot)."""
        if not self._loaded:
            self._load()
            return None
        now = timezone.now()
        written = dashboard.stamps(Engine.objects.filter(updated_at__gte=self._since))
        changed = {symbol for symbol, at in written if self._versions.get(symbol) != at}
        gone: set[str] = set()
        # What time alone changes (leases running out, heartbeats getting old) and rows
        # deleted without a command: scans of the table, twice a second, not on every hint.
        scan = now - self._scanned_at >= SCAN_EVERY
        seen = runners_seen() if scan else {}
        if scan:
            changed.update(self._expired(now))
            changed.update(self._turned_stale(now, seen))
            changed.update(self._beating_again(now, seen))
            if Engine.objects.count() != len(self._rows) + len(changed - self._rows.keys()):
                present = set(Engine.objects.values_list("symbol", flat=True))
                gone = self._rows.keys() - present
                changed |= present - self._rows.keys()
        commands, removed = self._changed_commands(self._since)
        runners, beat = self._changed_runners()
        if changed and not seen:
            seen = runners_seen()
        deltas, kept, keys, versions = [], {}, {}, {}
        for raw in _read(changed, now, self._since, seen):
            symbol = raw[0]
            versions[symbol] = raw[dashboard.UPDATED]
            key = dashboard.row_key(raw)
            if self._keys.get(symbol) == key:
                continue  # a heartbeat: nothing the page shows
            keys[symbol] = key
            old = self._rows.get(symbol)
            delta = row_delta(old, dashboard.page_row(raw, seen))
            if delta is not None:
                deltas.append(delta)
                kept[symbol] = {**old, **delta} if old else delta
        removed = sorted((set(removed) | gone) & (self._rows.keys() - versions.keys()))
        flushed = self.flushed_at if beat is None else max(beat, self.flushed_at or 0.0)
        with self._lock:
            self._since = now - OVERLAP
            if scan:
                self._expired_since = self._stale_since = self._scanned_at = now
            self._versions.update(versions)
            self._keys.update(keys)
            self._rows.update(kept)
            for symbol in removed:
                for known in (self._rows, self._keys, self._versions):
                    known.pop(symbol, None)
            if not (deltas or commands or removed or runners is not None) and (
                flushed == self.flushed_at
            ):
                return None
            self.flushed_at = flushed
            seq = self.seq + 1  # one number per frame it is sent in (see ``frames``)
            self.seq += max(1, -(-len(deltas) // FRAME_ROWS))
        return {
            "seq": seq,
            "now": now.timestamp(),
            "flushed_at": flushed,
            "engines": deltas,
            "commands": commands,
            "removed": removed,
            "runners": runners,
        }

    def _load(self) -> None:
        """Read the whole fleet as the pages will be sent it."""
        now = timezone.now()
        rows, keys, versions = dashboard.fleet_rows(now)
        since = now - OVERLAP
        for command in dashboard.changed_commands(since):
            self._commands[command.pk] = command.acked_at.timestamp() if command.acked_at else None
        runners = runners_list()
        with self._lock:
            self._rows, self._keys, self._versions = rows, keys, versions
            self.flushed_at = dashboard.last_flush(runners)
            self._since, self._expired_since, self._stale_since = since, now, now
            self._scanned_at = now
            self._runners = [{**r, "last_seen": None} if r["live"] else r for r in runners]
            self._loaded = True

    def _expired(self, now: datetime) -> list[str]:
        """Engines whose lease ran out since the last look: nothing wrote them (their runner
        may be dead), yet they are ``unknown`` now."""
        rows = Engine.objects.filter(
            lease_expires_at__gt=self._expired_since, lease_expires_at__lte=now
        )
        return list(rows.exclude(status__in=AT_REST).values_list("symbol", flat=True))

    def _turned_stale(self, now: datetime, seen: Mapping[str, RunnerSeen]) -> list[str]:
        """Engines whose heartbeat got older than ``STALE_AFTER`` since the last look: their
        own, or the one their runner carries for them (``Engine.beats_with_runner``)."""
        stale = timedelta(seconds=dashboard.STALE_AFTER)
        after, until = self._stale_since - stale, now - stale
        # Every row whose own beat crossed (one in step may show it, when it is the later).
        on_own = Q(last_heartbeat__gt=after, last_heartbeat__lte=until)
        went = set(beating_runners(seen, after)) - set(beating_runners(seen, until))
        if went:
            on_own |= Q(beats_with_runner=True, lease_owner__in=went)
        return list(Engine.objects.filter(on_own).values_list("symbol", flat=True))

    def _changed_runners(self) -> tuple[list[dict[str, Any]] | None, float | None]:
        """Every runner when one joined, left, went silent or changed what it holds (None
        otherwise), and the newest flush of a live one. A live runner's ``last_seen`` moves
        every flush: the page needs no step, only the frame's ``flushed_at``."""
        runners = runners_list()
        key = [{**row, "last_seen": None} if row["live"] else row for row in runners]
        beat = dashboard.last_flush(runners)
        if key == self._runners:
            return None, beat
        self._runners = key
        return runners, beat

    def _beating_again(self, now: datetime, seen: Mapping[str, RunnerSeen]) -> list[str]:
        """Running engines shown stale whose heartbeat is fresh again: a beat alone does not
        stamp ``updated_at``. (Usually none are stale: no query.)"""
        stale = [
            symbol
            for symbol, row in self._rows.items()
            if row["stale"] and row["status"] in ACTIVE_SHOWN
        ]
        fresh = now - timedelta(seconds=dashboard.STALE_AFTER)
        found: list[str] = []
        for start in range(0, len(stale), READ_CHUNK):
            chunk = Engine.objects.filter(symbol__in=stale[start : start + READ_CHUNK])
            found += chunk.filter(beat_after(fresh, seen)).values_list("symbol", flat=True)
        return found

    def _changed_commands(self, since: datetime) -> tuple[list[dict[str, Any]], list[str]]:
        """Commands given or acknowledged since ``since`` not sent yet, and the symbols of
        the engines removed by them."""
        commands, removed = [], []
        for command in dashboard.changed_commands(since):
            acked = command.acked_at.timestamp() if command.acked_at else None
            if command.pk in self._commands and self._commands[command.pk] == acked:
                continue
            self._commands[command.pk] = acked
            commands.append(dashboard.command_row(command))
            if command.action == command.Action.REMOVE and command.engine_id is None:
                removed.append(command.symbol)
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


def frames(message: dict[str, Any]) -> list[dict[str, Any]]:
    """``message`` as frames of at most ``FRAME_ROWS`` engines, numbered on from its ``seq``
    (daphne sends no frame over 1 MiB): applied in turn, they are the message."""
    rows = message["engines"]
    parts = [rows[i : i + FRAME_ROWS] for i in range(0, len(rows), FRAME_ROWS)] or [[]]
    out = [{**message, "engines": parts[0]}]
    for index, part in enumerate(parts[1:], start=1):
        empty = {"commands": [], "removed": [], "runners": None}
        out.append({**message, **empty, "seq": message["seq"] + index, "engines": part})
    return out


def row_delta(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any] | None:
    """The fields of page row ``new`` that differ from ``old`` (with ``symbol``), all of
    them for a new engine, None when nothing shown changed. ``last_heartbeat`` goes along
    only when ``stale`` flips: a heartbeat alone is the frame's ``flushed_at``."""
    if old is None:
        return new
    delta = {
        name: value
        for name, value in new.items()
        if name != "last_heartbeat" and old.get(name) != value
    }
    if not delta:
        return None
    if "stale" in delta:
        delta["last_heartbeat"] = new["last_heartbeat"]
    return {"symbol": new["symbol"], **delta}


READ_CHUNK = 2000  # symbols per query: SQLite takes at most 32,766 parameters


def _read(
    symbols: set[str], now: datetime, since: datetime, seen: Mapping[str, RunnerSeen]
) -> Iterator[tuple]:
    """``dashboard.raw_rows`` of the engines ``symbols``: after a flush, most of them were
    written since ``since``, read in one go; the others by symbol."""
    rest = set(symbols)
    if len(symbols) > READ_CHUNK:
        for raw in dashboard.raw_rows(Engine.objects.filter(updated_at__gte=since), now, seen):
            if raw[0] in rest:
                rest.discard(raw[0])
                yield raw
    ordered = sorted(rest)
    for start in range(0, len(ordered), READ_CHUNK):
        chunk = Engine.objects.filter(symbol__in=ordered[start : start + READ_CHUNK])
        yield from dashboard.raw_rows(chunk, now, seen)


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
