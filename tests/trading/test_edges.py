"""Edges of trading found in review: a failed engine's position, pages past the end, and
numbers JSON should not carry (NaN, Infinity) in an engine's config."""

from __future__ import annotations

import pytest

from engines_app.models import Engine, EngineCommand
from engines_app.runner import store
from engines_app.runtime import EngineManager
from engines_app.runtime.broker import BUY, SELL
from engines_app.runtime.engine import EngineConfig
from engines_app.runtime.manager import Status
from tests.api.test_api import bearer, make_user
from tests.trading.test_store import book_rows
from tests.trading_support import T0, Clock, until
from tests.web.test_admin import CHANGELIST, as_user, operator  # noqa: F401 (a fixture)


def failing_config(on_stop: str) -> EngineConfig:
    """Long 1 at 101, marked at 102 on the third cycle; the fourth raises a fatal error."""
    return EngineConfig(
        "BTCUSDT", 0.001, feed="prices", feed_options={"prices": [100, 101, 102, 103]},
        fee_rate=0.0, slippage=0.0, params={"fast": 1, "slow": 2}, fatal_after_cycles=3,
        on_stop=on_stop,
    )  # fmt: skip


async def test_on_stop_close_flattens_the_position_when_the_engine_fails():
    manager = EngineManager(clock=Clock())
    manager.start(failing_config("close"))
    slot = manager.slots["BTCUSDT"]
    await until(lambda: slot.status == Status.FAILED)
    state = slot.engine.state
    assert (state.position, state.trade_count) == (None, 2)
    sides = [(e.fill.side, e.fill.qty, e.fill.price) for e in manager.drain_events()
             if getattr(e, "fill", None) is not None]  # fmt: skip
    assert sides == [(BUY, 1.0, 101.0), (SELL, 1.0, 102.0)]  # closed at the last price


async def test_on_stop_hold_keeps_the_position_of_a_failed_engine():
    manager = EngineManager(clock=Clock())
    manager.start(failing_config("hold"))
    slot = manager.slots["BTCUSDT"]
    await until(lambda: slot.status == Status.FAILED)
    assert (slot.engine.state.position, slot.engine.state.trade_count) == (1.0, 1)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("page", "code"),
    [("3", 200), ("1000000", 200), ("1000001", 400), ("922337203685477580", 400),
     ("100000000000000000000", 400)],
)  # fmt: skip
def test_a_page_past_the_end_is_empty_not_a_database_error(client, django_user_model, page, code):
    engine = Engine.objects.create(symbol="BTCUSDT")
    _, rows = book_rows(engine, [(BUY, 1, 100.0, T0), (SELL, 1, 101.0, T0 + 1)])
    store.write(statuses=[], errors=[], restarts=[], heartbeats=[], books=rows)
    token = bearer(make_user(django_user_model, "viewer"))
    response = client.get(f"/engines/trades/BTCUSDT?page={page}&page_size=500", **token)
    assert response.status_code == code, response.content
    if code == 200:  # past the end: empty, not a database error
        assert (response.json()["total"], response.json()["trades"]) == (2, [])
    else:  # beyond any real page: a clear 400
        assert "page" in response.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"order_qty": NaN}', "order_qty must be a number greater than 0"),
        ('{"daily_loss_limit": NaN}', "daily_loss_limit must be a number greater than 0"),
        ('{"max_position_notional": Infinity}', "max_position_notional must be a number"),
        ('{"max_order_notional": -Infinity}', "max_order_notional must be a number"),
        ('{"feed_options": {"price": Infinity}}', "feed_options.price must be a number"),
        ('{"feed": "ws", "feed_options": {"url": "ws://127.0.0.1:9/", "reconnect_cap": '
         "Infinity}}", "feed_options.reconnect_cap must be a number greater than 0"),
    ],
)  # fmt: skip
def test_nan_and_infinity_in_a_config_are_refused_in_the_admin_form(operator, config, message):  # noqa: F811
    form = {"symbol": "ADAUSDT", "desired_state": "running", "cycle_interval": "",
            "config": config}  # fmt: skip
    response = as_user(operator).post(f"{CHANGELIST}add/", form)
    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors["config"])
    assert not Engine.objects.exists() and not EngineCommand.objects.exists()
