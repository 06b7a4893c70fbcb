"""A fake exchange on loopback for each test, ccxt pointed at it (no test reaches a real one)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from engines_app.runtime.exchanges import URLS_ENV
from tests.helpers.fake_exchange import FakeExchange


@pytest.fixture
def exchange(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeExchange]:
    with FakeExchange() as fake:
        monkeypatch.setenv(URLS_ENV, json.dumps({"binance": fake.url}))
        yield fake
