"""The dashboard websocket through the real ASGI stack: origin check, session auth, the
consumer and its broadcaster, against a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client
from django.utils import timezone

from engines_app.models import Engine, EngineCommand
from engines_app.runner import store
from engines_app.selectors import dashboard
from engines_app.web import consumers
from engines_app.web.consumers import DashboardConsumer
from levipanel.asgi import application
from tests.helpers import FakeClock, heartbeat, hold

pytestmark = pytest.mark.django_db(transaction=True)

# A page served at http://127.0.0.1:8000 opens its websocket with these two headers.
HOST = (b"host", b"127.0.0.1:8000")
ORIGIN = (b"origin", b"http://127.0.0.1:8000")
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def session_cookie(user) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


@pytest.fixture(autouse=True)
def fresh_connect_buckets(monkeypatch) -> None:
    """Each test starts with full per-user connection buckets (user ids repeat)."""
    monkeypatch.setattr(consumers, "_connects", {})
    monkeypatch.setattr(consumers, "_session_users", {})


@pytest.fixture
def engines() -> list[Engine]:
    """Three running engines a live runner holds."""
    engines = [Engine.objects.create(symbol=s, status=Engine.Status.RUNNING) for s in SYMBOLS]
    hold(engines)
    return engines


@pytest.fixture
def viewer() -> tuple[bytes, bytes]:
    """The session cookie of a logged-in user without the control permission."""
    return session_cookie(get_user_model().objects.create_user("viewer", password="pw-viewer-1"))


@pytest.fixture
def operator() -> tuple[bytes, bytes]:
    """The session cookie of a logged-in user with the control permission."""
    user = get_user_model().objects.create_user("operator", password="pw-operator-1")
    user.user_permissions.add(Permission.objects.get(codename="control_engine"))
    return session_cookie(user)


async def connect(*headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, "/ws/engines/", headers=[HOST, *headers])
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def receive(communicator: WebsocketCommunicator, kind: str, timeout: float = 5) -> dict:
    """The next frame of ``kind``, skipping others (e.g. changes from the setup)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await communicator.receive_json_from(timeout=max(0.01, deadline - time.monotonic()))
        if frame["type"] == kind:
            return frame


async def receive_row(communicator: WebsocketCommunicator, symbol: str, **expected) -> dict:
    """The changes frame that brings ``symbol`` with the ``expected`` values."""
    while True:
        frame = await receive(communicator, "changes")
        for row in frame["engines"]:
            if row["symbol"] == symbol and all(row[k] == v for k, v in expected.items()):
                return frame


def runner_writes_status(engine_id: int, status: str, reason: str = "") -> None:
    """What the runner does when an engine's status changes."""
    store.write(
        statuses=[store.StatusRow(engine_id, status, reason, None, 0, 5, None, 0, None)],
        errors=[],
        restarts=[],
        heartbeats=[],
    )


async def test_snapshot_on_connect(engines, viewer):
    communicator = await connect(ORIGIN, viewer)
    snapshot = await communicator.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot"
    assert [row["symbol"] for row in snapshot["engines"]] == SYMBOLS
    assert snapshot["counts"]["total"] == 3 and snapshot["counts"]["running"] == 3
    assert snapshot["can_control"] is False
    assert set(snapshot["engines"][0]) == set(dashboard.PAGE_FIELDS)
    assert snapshot["engines"][0]["runner"] == "runner-a"
    await communicator.disconnect()


async def test_change_in_the_database_is_pushed(engines, viewer):
    communicator = await connect(ORIGIN, viewer)
    snapshot = await receive(communicator, "snapshot")
    await database_sync_to_async(runner_writes_status)(engines[1].id, "crashed", "boom")
    changes = await receive_row(communicator, "ETHUSDT", status="crashed")
    assert changes["seq"] > snapshot["seq"]
    row = next(row for row in changes["engines"] if row["symbol"] == "ETHUSDT")
    # Only what changed: the rest of the row is as the snapshot had it.
    assert row == {"symbol": "ETHUSDT", "status": "crashed", "status_reason": "boom"}
    await communicator.disconnect()


async def test_changes_are_numbered_without_gaps(engines, viewer):
    communicator = await connect(ORIGIN, viewer)
    seq = (await receive(communicator, "snapshot"))["seq"]
    for status in ("stopping", "stopped", "starting"):
        await database_sync_to_async(runner_writes_status)(engines[0].id, status)
        while True:
            frame = await receive(communicator, "changes")
            assert frame["seq"] == seq + 1
            seq = frame["seq"]
            if any(row["status"] == status for row in frame["engines"]):
                break
    await communicator.disconnect()


async def test_anonymous_is_refused(engines):
    communicator = WebsocketCommunicator(application, "/ws/engines/", headers=[HOST, ORIGIN])
    connected, code = await communicator.connect(timeout=5)
    assert not connected and code == 4403


async def handshake(*headers: tuple[bytes, bytes]) -> bool:
    """Whether a handshake with exactly these headers is accepted."""
    communicator = WebsocketCommunicator(application, "/ws/engines/", headers=list(headers))
    connected, _ = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return connected


@pytest.mark.parametrize(
    "origin",
    [
        b"http://127.0.0.1:9999",
        b"https://127.0.0.1:8000",
        b"http://127.0.0.1",
        b"http://localhost:8000",
        b"http://evil.example",
        b"null",
        b"",
    ],
    ids=["other-port", "other-scheme", "default-port", "other-host", "other-site", "null", "empty"],
)
async def test_an_origin_other_than_the_panels_own_is_refused(engines, viewer, origin):
    assert not await handshake(HOST, (b"origin", origin), viewer)


async def test_missing_origin_is_refused(engines, viewer):
    assert not await handshake(HOST, viewer)


async def test_the_exact_own_origin_is_accepted(engines, viewer):
    assert await handshake(HOST, ORIGIN, viewer)


async def test_a_host_outside_allowed_hosts_is_refused_even_with_its_own_origin(engines, viewer):
    host, origin = (b"host", b"evil.example:8000"), (b"origin", b"http://evil.example:8000")
    assert not await handshake(host, origin, viewer)


async def test_an_origin_in_csrf_trusted_origins_is_accepted(engines, viewer, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://panel.example.com", "https://*.ops.example"]
    assert await handshake(HOST, (b"origin", b"https://panel.example.com"), viewer)
    assert await handshake(HOST, (b"origin", b"https://a.ops.example"), viewer)
    assert not await handshake(HOST, (b"origin", b"http://panel.example.com"), viewer)


async def test_behind_a_tls_proxy_the_https_origin_is_its_own(engines, viewer, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proto = (b"x-forwarded-proto", b"https")
    assert await handshake(HOST, (b"origin", b"https://127.0.0.1:8000"), proto, viewer)
    assert not await handshake(HOST, ORIGIN, proto, viewer)


@pytest.mark.parametrize(
    "frame",
    ["not json", "[1, 2]", '"text"', '{"type": "dance"}', "x" * 5000, "[" * 3000],
    ids=["not-json", "array", "string", "unknown-type", "too-big", "deeply-nested"],
)
async def test_malformed_frame_is_answered_and_the_connection_stays_up(engines, viewer, frame):
    communicator = await connect(ORIGIN, viewer)
    await receive(communicator, "snapshot")
    await communicator.send_to(text_data=frame)
    error = await receive(communicator, "error")
    assert error["message"]
    await communicator.send_json_to({"type": "ping"})
    assert (await receive(communicator, "pong"))["type"] == "pong"
    await communicator.disconnect()


async def test_binary_frame_is_answered(engines, viewer):
    communicator = await connect(ORIGIN, viewer)
    await receive(communicator, "snapshot")
    await communicator.send_to(bytes_data=b"\x00\x01")
    assert "JSON text frame" in (await receive(communicator, "error"))["message"]
    await communicator.disconnect()


async def test_client_asks_for_a_snapshot_again(engines, viewer):
    communicator = await connect(ORIGIN, viewer)
    await receive(communicator, "snapshot")
    await communicator.send_json_to({"type": "snapshot"})
    again = await receive(communicator, "snapshot")
    assert len(again["engines"]) == 3
    await communicator.disconnect()


async def test_command_needs_the_control_permission(engines, viewer):
    communicator = await connect(ORIGIN, viewer)
    await receive(communicator, "snapshot")
    await communicator.send_json_to(
        {"type": "command", "action": "stop", "symbol": "ETHUSDT", "id": "c1"}
    )
    error = await receive(communicator, "error")
    assert error["id"] == "c1" and "permission" in error["message"]
    assert await EngineCommand.objects.acount() == 0
    engine = await Engine.objects.aget(symbol="ETHUSDT")
    assert engine.desired_state == "running"
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ({"action": "explode", "symbol": "ETHUSDT"}, "action must be one of"),
        ({"action": ["stop"], "symbol": "ETHUSDT"}, "action must be one of"),
        ({"action": {"stop": 1}, "symbol": "ETHUSDT"}, "action must be one of"),
        ({"action": "stop", "symbol": ["ETHUSDT"]}, "symbol must be a string"),
        ({"action": "stop", "symbol": "eth/usdt"}, "symbol"),
        ({"action": "stop", "symbol": 7}, "symbol"),
        ({"action": "stop", "symbol": "DOGEUSDT"}, "no engine with symbol DOGEUSDT"),
        ({"action": "stop", "symbol": "ETHUSDT", "id": {"x": 1}}, "id must be"),
    ],
    ids=[
        "bad-action",
        "action-list",
        "action-object",
        "symbol-list",
        "bad-symbol",
        "symbol-not-text",
        "unknown-engine",
        "bad-id",
    ],
)
async def test_bad_command_is_refused_and_changes_nothing(engines, operator, command, message):
    communicator = await connect(ORIGIN, operator)
    await receive(communicator, "snapshot")
    await communicator.send_json_to({"type": "command", **command})
    assert message in (await receive(communicator, "error"))["message"]
    assert await EngineCommand.objects.acount() == 0
    assert await Engine.objects.filter(desired_state="running").acount() == 3
    await communicator.disconnect()


@pytest.mark.parametrize(
    "client_id",
    ["NaN", "Infinity", "1e400", "1.5", '"' + "x" * 65 + '"'],
    ids=["nan", "infinity", "overflow", "fraction", "too-long"],
)
async def test_refused_id_is_not_echoed_into_an_unreadable_frame(engines, operator, client_id):
    communicator = await connect(ORIGIN, operator)
    await receive(communicator, "snapshot")
    frame = f'{{"type": "command", "action": "stop", "symbol": "ETHUSDT", "id": {client_id}}}'
    await communicator.send_to(text_data=frame)
    while True:
        text = await communicator.receive_from(timeout=5)
        if '"error"' in text:
            break
    error = json.loads(text, parse_constant=_refuse_constant)  # strict, as a browser parses
    assert error["id"] is None and "id must be" in error["message"]
    assert await EngineCommand.objects.acount() == 0
    await communicator.disconnect()


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


async def test_command_calls_the_service_and_shows_pending_until_acked(engines, operator):
    communicator = await connect(ORIGIN, operator)
    snapshot = await receive(communicator, "snapshot")
    assert snapshot["can_control"] is True
    await communicator.send_json_to(
        {"type": "command", "action": "stop", "symbol": "ETHUSDT", "id": "c7"}
    )
    reply = await receive(communicator, "command")
    assert reply["id"] == "c7"
    pending = reply["command"]
    assert pending["action"] == "stop" and pending["acked_at"] is None
    saved = await EngineCommand.objects.select_related("user").aget(id=pending["id"])
    assert saved.source == "dashboard" and saved.user.username == "operator"
    assert (await Engine.objects.aget(symbol="ETHUSDT")).desired_state == "stopped"

    # The runner acknowledges: every open dashboard sees the command done.
    ack = store.Ack(pending["id"], "done", "stopped")
    await database_sync_to_async(store.write)(
        statuses=[], errors=[], restarts=[], heartbeats=[], acks=[ack]
    )
    while True:
        changes = await receive(communicator, "changes")
        acked = [c for c in changes["commands"] if c["id"] == pending["id"] and c["acked_at"]]
        if acked:
            break
    assert acked[0]["outcome"] == "done" and acked[0]["message"] == "stopped"
    await communicator.disconnect()


async def test_one_broadcaster_query_serves_every_dashboard(engines, viewer):
    first = await connect(ORIGIN, viewer)
    second = await connect(ORIGIN, viewer)
    await receive(first, "snapshot")
    await receive(second, "snapshot")
    from engines_app.web.broadcaster import broadcaster

    assert broadcaster().subscribers == 2
    await database_sync_to_async(runner_writes_status)(engines[2].id, "backoff")
    a = await receive_row(first, "SOLUSDT", status="backoff")
    b = await receive_row(second, "SOLUSDT", status="backoff")
    assert a["seq"] == b["seq"] and a["engines"] == b["engines"]
    await first.disconnect()
    await second.disconnect()
    assert broadcaster().subscribers == 0


async def test_an_open_dashboard_shows_unknown_soon_after_the_lease_runs_out(engines, viewer):
    """The runner was killed: its rows never change again, yet the page turns them unknown
    within about a second of the lease running out, not ``running`` for ever."""
    communicator = await connect(ORIGIN, viewer)
    await receive(communicator, "snapshot")
    await database_sync_to_async(hold)(engines[:1], "runner-a", 0.5)
    expires = time.monotonic() + 0.5
    changes = await receive_row(communicator, "BTCUSDT", status="unknown", runner=None)
    assert time.monotonic() - expires < 1.5
    assert [row["symbol"] for row in changes["engines"]] == ["BTCUSDT"]  # the others hold
    await communicator.disconnect()


async def test_an_open_dashboard_sees_a_runner_join_and_go_silent(engines, viewer):
    communicator = await connect(ORIGIN, viewer)
    assert (await receive(communicator, "snapshot"))["runners"] == []
    await database_sync_to_async(heartbeat)("runner-b", host="host-2", pid=22, held=2)
    joined = await receive_runners(communicator)
    assert [(r["name"], r["host"], r["held"], r["live"]) for r in joined] == [
        ("runner-b", "host-2", 2, True)
    ]
    gone = timezone.now() - timedelta(seconds=60)
    await database_sync_to_async(heartbeat)("runner-b", last_seen=gone)
    silent = await receive_runners(communicator)
    assert [(r["name"], r["live"]) for r in silent] == [("runner-b", False)]
    assert silent[0]["last_seen"] == round(gone.timestamp(), 3)
    await communicator.disconnect()


async def receive_runners(communicator: WebsocketCommunicator) -> list[dict]:
    """The runners of the next changes frame that brings them."""
    while (frame := await receive(communicator, "changes"))["runners"] is None:
        pass
    return frame["runners"]


@pytest.fixture
def frozen(monkeypatch) -> FakeClock:
    """The consumers' throttle clock, standing still until the test moves it."""
    clock = FakeClock()
    monkeypatch.setattr(DashboardConsumer, "clock", staticmethod(clock))
    return clock


async def send_pings(communicator: WebsocketCommunicator, count: int) -> None:
    for _ in range(count):
        await communicator.send_json_to({"type": "ping"})


async def reply(communicator: WebsocketCommunicator) -> dict:
    """The next frame that answers one of ours (pushed changes skipped)."""
    while (frame := await communicator.receive_json_from(timeout=5))["type"] == "changes":
        pass
    return frame


async def test_frames_past_the_bucket_get_an_error_and_the_connection_stays_up(
    engines, viewer, frozen
):
    communicator = await connect(ORIGIN, viewer)
    await receive(communicator, "snapshot")
    await send_pings(communicator, int(consumers.FRAME_BURST) + 1)
    for _ in range(int(consumers.FRAME_BURST)):
        assert (await reply(communicator))["type"] == "pong"
    refused = await reply(communicator)
    assert refused["type"] == "error" and "too many frames" in refused["message"]
    frozen.now += 1.0  # a second refills FRAME_RATE tokens
    await send_pings(communicator, 1)
    assert (await reply(communicator))["type"] == "pong"
    await communicator.disconnect()


async def test_a_snapshot_counts_as_several_frames(engines, viewer, frozen):
    communicator = await connect(ORIGIN, viewer)
    await receive(communicator, "snapshot")
    allowed = int(consumers.FRAME_BURST // consumers.SNAPSHOT_COST)
    for _ in range(allowed + 1):
        await communicator.send_json_to({"type": "snapshot"})
    for _ in range(allowed):
        assert (await reply(communicator))["type"] == "snapshot"
    assert (await reply(communicator))["type"] == "error"
    await communicator.disconnect()


async def test_a_connection_that_keeps_flooding_is_closed_with_4429(engines, viewer, frozen):
    communicator = await connect(ORIGIN, viewer)
    await receive(communicator, "snapshot")
    burst, patience = int(consumers.FRAME_BURST), int(consumers.PATIENCE)
    await send_pings(communicator, burst + patience + 5)
    kinds = [(await reply(communicator))["type"] for _ in range(burst + patience)]
    assert kinds == ["pong"] * burst + ["error"] * patience
    closed = await communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": consumers.FLOODING}
    assert await communicator.receive_nothing(timeout=0.1)  # nothing after the close


class UnreadConnection:
    """A daphne connection whose client has read nothing of what it was sent."""

    def backlog(self) -> int:
        return consumers.MAX_BACKLOG + 1

    def unread_frames(self) -> int:
        return 0

    def stop_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_a_client_that_does_not_read_is_closed_with_4408(engines, viewer, monkeypatch):
    # Under daphne the backlog is the transport's write buffer; here one that is always full.
    monkeypatch.setattr(consumers, "daphne_connection", lambda send: UnreadConnection())
    communicator = await connect(ORIGIN, viewer)
    closed = await communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": consumers.NOT_READING}


async def test_a_user_reconnecting_too_often_is_closed_with_4429_before_any_snapshot(
    engines, viewer, frozen
):
    for _ in range(int(consumers.CONNECT_BURST)):
        communicator = await connect(ORIGIN, viewer)
        await receive(communicator, "snapshot")
        await communicator.disconnect()
    communicator = await connect(ORIGIN, viewer)
    closed = await communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": consumers.FLOODING}
    frozen.now += 1 / consumers.CONNECT_RATE  # one more connection later on
    communicator = await connect(ORIGIN, viewer)
    await receive(communicator, "snapshot")
    await communicator.disconnect()


class PageState:
    """What the page keeps: a snapshot, then each changes frame applied in ``seq`` order."""

    def __init__(self, snapshot: dict) -> None:
        self.seq = snapshot["seq"]
        self.rows = {row["symbol"]: dict(row) for row in snapshot["engines"]}

    def apply(self, frame: dict) -> None:
        if frame["seq"] <= self.seq:
            return  # already in the snapshot
        assert frame["seq"] == self.seq + 1, "a gap: the page would ask for a snapshot"
        self.seq = frame["seq"]
        for delta in frame["engines"]:
            row = self.rows.get(delta["symbol"])
            if row is None:
                assert set(delta) == set(dashboard.PAGE_FIELDS), "a new engine comes whole"
                self.rows[delta["symbol"]] = dict(delta)
            else:
                row.update(delta)
        for symbol in frame["removed"]:
            del self.rows[symbol]


def shown(rows: dict) -> dict:
    """Rows as the page shows them: a fresh row's heartbeat age is counted from the frame's
    ``flushed_at``, so its own ``last_heartbeat`` is not sent on every flush."""
    return {
        s: {**r, "last_heartbeat": r["last_heartbeat"] if r["stale"] else None}
        for s, r in rows.items()
    }


def database_rows() -> dict:
    return shown(dashboard.fleet_rows(timezone.now())[0])


async def until_equal(communicator: WebsocketCommunicator, page: PageState) -> None:
    """Apply frames until the page shows what the database says (or fail after 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        # (A receive that times out would end the consumer: wait for a frame first.)
        if not await communicator.receive_nothing(timeout=0.3):
            page.apply(await receive(communicator, "changes"))
        expected = await database_sync_to_async(database_rows)()
        if shown(page.rows) == expected:
            return
        page_rows = shown(page.rows)
        assert time.monotonic() < deadline, [
            (
                s,
                {
                    k: (v, page_rows.get(s, {}).get(k))
                    for k, v in r.items()
                    if page_rows.get(s, {}).get(k) != v
                },
            )
            for s, r in expected.items()
        ] + [s for s in page_rows if s not in expected]


def runner_flushes(engines: list[Engine], changed: bool = True, **values) -> None:
    """A heartbeat flush of ``engines`` by the runner (their values too when ``changed``),
    and its own heartbeat row, as the runner writes them."""
    now = time.time()
    fields = {
        "last_heartbeat": now,
        "error_count": 0,
        "last_error": None,
        "position": 0.0,
        "daily_pnl": 0.0,
        "total_pnl": 0.0,
        "trade_count": 0,
        "last_tick_at": now,
        **values,
    }
    rows = [store.HeartbeatRow(engine.id, **fields, changed=changed) for engine in engines]
    store.write(statuses=[], errors=[], restarts=[], heartbeats=rows)
    heartbeat("runner-a", held=len(engines))


async def test_a_page_applying_snapshot_and_deltas_shows_what_the_database_says(engines, viewer):
    communicator = await connect(ORIGIN, viewer)
    page = PageState(await receive(communicator, "snapshot"))
    write = database_sync_to_async

    await write(runner_flushes)(engines, position=1.5, daily_pnl=3.25, trade_count=2)
    await until_equal(communicator, page)
    assert page.rows["BTCUSDT"]["trade_count"] == 2 and page.rows["BTCUSDT"]["stale"] is False

    await write(runner_flushes)(engines, changed=False)
    frame = await receive(communicator, "changes")  # a heartbeat alone: no row, a flush time
    assert frame["engines"] == [] and frame["flushed_at"] > 0
    page.apply(frame)

    await write(runner_writes_status)(engines[1].id, "crashed", "boom")
    await write(Engine.objects.create)(symbol="XRPUSDT", status="stopped")
    await write(services_remove)("SOLUSDT")
    await write(hold)(engines[:1], "runner-a", 0.3)  # its runner dies: unknown in 0.3 s
    await asyncio.sleep(0.4)
    await until_equal(communicator, page)
    assert sorted(page.rows) == ["BTCUSDT", "ETHUSDT", "XRPUSDT"]
    assert page.rows["BTCUSDT"]["status"] == "unknown"
    assert page.rows["ETHUSDT"]["status"] == "crashed"
    await communicator.disconnect()


def services_remove(symbol: str) -> None:
    from engines_app.services import engines as services

    services.engine_remove(symbol=symbol)


async def test_a_large_fleets_snapshot_comes_in_parts_before_any_change(viewer, monkeypatch):
    monkeypatch.setattr(consumers, "SNAPSHOT_ROWS", 2)
    symbols = [f"S{i}USDT" for i in range(5)]
    await database_sync_to_async(Engine.objects.bulk_create)([Engine(symbol=s) for s in symbols])
    communicator = await connect(ORIGIN, viewer)
    first = await communicator.receive_json_from(timeout=5)
    parts = [first]
    while parts[-1]["more"]:
        parts.append(await communicator.receive_json_from(timeout=5))
    assert [p["type"] for p in parts] == ["snapshot", "snapshot_more", "snapshot_more"]
    assert {p["seq"] for p in parts} == {first["seq"]}
    assert [row["symbol"] for p in parts for row in p["engines"]] == symbols
    assert first["counts"]["total"] == 5  # the whole fleet's, in the first part
    await communicator.disconnect()


async def test_a_reconnecting_page_gets_a_fresh_snapshot_not_a_delta(engines, viewer):
    first = await connect(ORIGIN, viewer)
    await receive(first, "snapshot")
    await first.disconnect()  # the last page left: the broadcaster stops
    await database_sync_to_async(runner_writes_status)(engines[0].id, "crashed", "gone")
    again = await connect(ORIGIN, viewer)
    frame = await again.receive_json_from(timeout=5)
    assert frame["type"] == "snapshot"  # first, before any changes frame
    assert frame["engines"][0]["status"] == "crashed"
    await again.disconnect()


async def test_a_session_out_of_connections_is_refused_before_the_database(
    engines, viewer, frozen, monkeypatch
):
    # Past the burst, the gate in front of the session and auth middleware refuses the
    # handshake itself: the session is not loaded (no query); later on it is let through.
    for _ in range(int(consumers.CONNECT_BURST)):
        communicator = await connect(ORIGIN, viewer)
        await receive(communicator, "snapshot")
        await communicator.disconnect()
    loads = []
    load = SessionStore.load
    monkeypatch.setattr(SessionStore, "load", lambda self: loads.append(1) or load(self))
    communicator = await connect(ORIGIN, viewer)
    closed = await communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": consumers.FLOODING}
    assert loads == []
    frozen.now += 1 / consumers.CONNECT_RATE
    communicator = await connect(ORIGIN, viewer)
    await receive(communicator, "snapshot")
    await communicator.disconnect()
    assert loads  # the session was read this time
