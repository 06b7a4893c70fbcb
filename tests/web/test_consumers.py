"""The dashboard websocket through the real ASGI stack: origin check, session auth, the
consumer and its broadcaster, against a real SQLite file."""

from __future__ import annotations

import json
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from engines_app.models import Engine, EngineCommand
from engines_app.runner import store
from levipanel.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1")
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def session_cookie(user) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


@pytest.fixture
def engines() -> list[Engine]:
    return [Engine.objects.create(symbol=s, status=Engine.Status.RUNNING) for s in SYMBOLS]


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
    communicator = WebsocketCommunicator(application, "/ws/engines/", headers=list(headers))
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
    guide = {"status", "uptime_seconds", "last_heartbeat", "error_count", "last_error"}
    results = {"position", "daily_pnl", "total_pnl", "trade_count", "version"}
    assert guide | results <= set(snapshot["engines"][0])
    await communicator.disconnect()


async def test_change_in_the_database_is_pushed(engines, viewer):
    communicator = await connect(ORIGIN, viewer)
    snapshot = await receive(communicator, "snapshot")
    await database_sync_to_async(runner_writes_status)(engines[1].id, "crashed", "boom")
    changes = await receive_row(communicator, "ETHUSDT", status="crashed")
    assert changes["seq"] > snapshot["seq"]
    row = next(row for row in changes["engines"] if row["symbol"] == "ETHUSDT")
    assert row["status"] == "crashed" and row["status_reason"] == "boom"
    assert row["version"] > snapshot["engines"][1]["version"]
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
    communicator = WebsocketCommunicator(application, "/ws/engines/", headers=[ORIGIN])
    connected, code = await communicator.connect(timeout=5)
    assert not connected and code == 4403


async def test_bad_origin_is_refused(engines, viewer):
    headers = [(b"origin", b"http://evil.example"), viewer]
    communicator = WebsocketCommunicator(application, "/ws/engines/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert not connected


async def test_missing_origin_is_refused(engines, viewer):
    communicator = WebsocketCommunicator(application, "/ws/engines/", headers=[viewer])
    connected, _ = await communicator.connect(timeout=5)
    assert not connected


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
