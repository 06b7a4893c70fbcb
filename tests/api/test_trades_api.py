"""``GET /engines/trades/{symbol}`` and ``GET /engines/profit``: closed by default, clear 4xx
errors, the selectors' shapes."""

from __future__ import annotations

import pytest

from engines_app.models import Engine, Trade
from engines_app.runner import store
from engines_app.runtime.broker import BUY, SELL
from tests.helpers import T0, bearer, book_rows, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def traded(db):
    engine = Engine.objects.create(symbol="BTCUSDT")
    steps = [(BUY, 2, 100.0, T0), (SELL, 1, 110.0, T0 + 1), (SELL, 1, 90.0, T0 + 2)]
    _, rows = book_rows(engine, steps)
    store.write(statuses=[], errors=[], restarts=[], heartbeats=[], books=rows)
    Engine.objects.create(symbol="ETHUSDT")
    return engine


@pytest.fixture
def viewer_token(django_user_model):
    return bearer(make_user(django_user_model, "viewer"))  # reading needs no permission


def test_trades_newest_first_in_pages(client, traded, viewer_token):
    response = client.get("/engines/trades/BTCUSDT?page=1&page_size=2", **viewer_token)
    assert response.status_code == 200
    body = response.json()
    assert (body["total"], body["page"], body["page_size"]) == (3, 1, 2)
    assert [(t["seq"], t["side"], t["price"]) for t in body["trades"]] == [
        (3, "sell", 90.0),
        (2, "sell", 110.0),
    ]
    assert body["trades"][0]["id"] == Trade.objects.get(seq=3).fill_id
    second = client.get("/engines/trades/BTCUSDT?page=2&page_size=2", **viewer_token).json()
    assert [t["seq"] for t in second["trades"]] == [1]


def test_profit_per_engine_and_in_total(client, traded, viewer_token):
    body = client.get("/engines/profit", **viewer_token).json()
    btc, eth = body["engines"]
    assert btc["symbol"] == "BTCUSDT" and btc["trade_count"] == 3
    assert btc["realized"] == pytest.approx(0.0) and btc["fees"] == pytest.approx(0.4)
    assert (btc["closed_count"], btc["win_rate"]) == (2, 0.5)
    assert eth["trade_count"] == 0 and eth["win_rate"] is None
    assert body["total"]["trade_count"] == 3


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        ("/engines/trades/NOPEUSDT", 404, "no engine with symbol NOPEUSDT"),
        ("/engines/trades/btcusdt", 400, "did you mean BTCUSDT?"),
        ("/engines/trades/BTCUSDT?page=0", 400, "page must be >= 1"),
        ("/engines/trades/BTCUSDT?page_size=501", 400, "page_size from 1 to 500"),
        ("/engines/trades/BTCUSDT?page=x", 400, "page"),
    ],
)
def test_bad_input_gets_a_clear_4xx(client, traded, viewer_token, path, status, detail):
    response = client.get(path, **viewer_token)
    assert response.status_code == status
    assert detail in response.json()["detail"]


def test_anonymous_clients_are_refused(client, traded):
    for path in ("/engines/trades/BTCUSDT", "/engines/profit"):
        response = client.get(path)
        assert response.status_code == 401
        assert "detail" in response.json()


@pytest.mark.parametrize(
    ("page", "code"),
    [
        ("3", 200),
        ("1000000", 200),
        ("1000001", 400),
        ("922337203685477580", 400),
        ("100000000000000000000", 400),
    ],
)
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
