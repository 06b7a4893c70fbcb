"""Hypothesis-made frames against the dashboard websocket (the real ASGI stack: origin check,
session, consumer): any JSON value, commands with random actions, symbols and ids, text
that is not JSON, oversize and deeply nested text, binary frames. Each frame gets the frame
the protocol documents (an error frame for anything malformed or refused), and the
connection stays up: it still answers a ping after every sequence."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from engines_app.models import Engine
from engines_app.web import consumers
from engines_app.web.consumers import MAX_FRAME, DashboardConsumer
from levipanel.asgi import application
from tests.helpers import FakeClock, fuzz_settings, make_user

pytestmark = pytest.mark.django_db(transaction=True)

HOST = (b"host", b"127.0.0.1:8000")
ORIGIN = (b"origin", b"http://127.0.0.1:8000")
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
ACTIONS = ["start", "stop", "restart"]
EXAMPLES = 50

# Any JSON value Python's parser reads back, NaN and Infinity included.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**53 - 2, max_value=2**70)
    | st.floats()
    | st.text(max_size=80)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
symbols = st.sampled_from(SYMBOLS) | st.from_regex(r"[A-Z0-9]{2,20}", fullmatch=True)
ids = st.text(max_size=70) | st.integers(min_value=-(2**54), max_value=2**54)
# Shaped like the page's commands, with random symbols and ids ...
commands = st.fixed_dictionaries(
    {"type": st.just("command"), "action": st.sampled_from(ACTIONS), "symbol": symbols},
    optional={"id": ids},
)
# ... and with any field missing or of any type.
bad_commands = st.fixed_dictionaries(
    {"type": st.just("command")},
    optional={
        "action": st.sampled_from(ACTIONS) | json_values,
        "symbol": symbols | json_values,
        "id": ids | json_values,
    },
)
known = st.fixed_dictionaries(
    {"type": st.sampled_from(["snapshot", "ping", "command", "changes", "error", ""])},
    optional={"id": json_values},
)
objects = bad_commands | known | st.dictionaries(st.text(max_size=10), json_values, max_size=5)
text_frames = st.one_of(
    commands.map(json.dumps),
    objects.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),  # mostly not JSON
    st.integers(MAX_FRAME - 40, 3 * MAX_FRAME).map(
        lambda n: '{"type": "ping", "pad": "' + "x" * n + '"}'
    ),
    st.integers(10, 5000).map(lambda depth: "[" * depth + "]" * depth),
)
frames = st.one_of(
    text_frames.map(lambda text: {"type": "websocket.receive", "text": text}),
    st.binary(max_size=200).map(lambda data: {"type": "websocket.receive", "bytes": data}),
)


def expected(frame: dict[str, Any], can_control: bool) -> tuple[str, Any]:
    """The documented answer to ``frame``: its type and the id it echoes."""
    text = frame.get("text")
    if text is None or len(text) > MAX_FRAME:
        return "error", None
    try:
        content = json.loads(text)
    except (ValueError, RecursionError):
        return "error", None
    if not isinstance(content, dict):
        return "error", None
    kind, client_id = content.get("type"), content.get("id")
    echo = client_id if _echoed(client_id) else None
    if kind == "snapshot":
        return "snapshot", None
    if kind == "ping":
        return "pong", None
    if kind != "command":
        return "error", echo
    carried_out = (
        content.get("action") in ACTIONS and content.get("symbol") in SYMBOLS and can_control
    )
    return ("command" if carried_out and _echoed(client_id) else "error"), echo


def _echoed(client_id: Any) -> bool:
    """Echoed in answers: a string of at most 64 characters or an integer (or no id)."""
    if isinstance(client_id, str):
        return len(client_id) <= 64
    return client_id is None or (isinstance(client_id, int) and abs(client_id) < 2**53)


async def answer(communicator: WebsocketCommunicator) -> dict[str, Any]:
    """The consumer's next frame to this client, skipping pushed changes. A close or an
    exception in the consumer fails here."""
    while True:
        output = await communicator.receive_output(timeout=5)
        assert output["type"] == "websocket.send", f"the connection was closed: {output}"
        frame = json.loads(output["text"])
        if frame["type"] != "changes":
            return frame


def same_id(actual: Any, wanted: Any) -> bool:
    """The id echoed is the one sent, of the same JSON type."""
    if isinstance(wanted, float) and math.isnan(wanted):
        return isinstance(actual, float) and math.isnan(actual)
    return actual == wanted and type(actual) is type(wanted)


async def fuzz(
    communicator: WebsocketCommunicator,
    clock: FakeClock,
    sequence: list[dict[str, Any]],
    can_control: bool,
) -> None:
    """Send each frame, check its answer, then check the connection still answers a ping."""
    for frame in sequence:
        clock.now += 1.0  # a frame a second: well inside the throttle, which is tested apart
        await communicator.send_input(frame)
        reply = await answer(communicator)
        kind, echo = expected(frame, can_control)
        assert reply["type"] == kind, (frame, reply)
        if kind == "error":
            assert reply["message"], reply
        if kind in ("error", "command"):
            assert same_id(reply["id"], echo), (frame, reply)
        if kind == "command":
            sent = json.loads(frame["text"])
            assert (reply["command"]["action"], reply["command"]["symbol"]) == (
                sent["action"],
                sent["symbol"],
            )
    await communicator.send_json_to({"type": "ping"})
    assert (await answer(communicator))["type"] == "pong"


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """The consumers' throttle clock, moved by the test; fresh per-user connection buckets."""
    clock = FakeClock()
    monkeypatch.setattr(DashboardConsumer, "clock", staticmethod(clock))
    monkeypatch.setattr(consumers, "_connects", {})
    monkeypatch.setattr(consumers, "_session_users", {})
    return clock


@pytest.fixture(params=["viewer", "operator"])
def session(request, clock) -> tuple[tuple[bytes, bytes], bool]:
    """A logged-in user's session cookie and whether the user may control engines, with the
    engines to steer."""
    for symbol in SYMBOLS:
        Engine.objects.create(symbol=symbol)
    can_control = request.param == "operator"
    user = make_user(get_user_model(), request.param, control=can_control)
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()), can_control


async def connected(session, clock) -> WebsocketCommunicator:
    """A dashboard connection of the session's user, past its snapshot."""
    clock.now += 10.0  # one connection per example, within the user's connection bucket
    headers = [HOST, ORIGIN, session[0]]
    communicator = WebsocketCommunicator(application, "/ws/engines/", headers=headers)
    assert (await communicator.connect(timeout=5))[0]
    assert (await answer(communicator))["type"] == "snapshot"
    return communicator


@given(sequence=st.lists(frames, min_size=1, max_size=8))
@fuzz_settings(EXAMPLES)
async def test_every_frame_is_answered_and_the_connection_stays_up(session, clock, sequence):
    communicator = await connected(session, clock)
    try:
        await fuzz(communicator, clock, sequence, can_control=session[1])
    finally:
        await communicator.disconnect()


@given(
    sequence=st.lists(
        commands.map(lambda c: {"type": "websocket.receive", "text": json.dumps(c)}),
        min_size=1,
        max_size=6,
    )
)
@fuzz_settings(EXAMPLES)
async def test_commands_are_carried_out_or_refused(session, clock, sequence):
    communicator = await connected(session, clock)
    try:
        await fuzz(communicator, clock, sequence, can_control=session[1])
    finally:
        await communicator.disconnect()
