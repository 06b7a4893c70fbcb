"""Reads about real exchanges: an engine's broker and exchange, the engines that trade on
one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..models import Engine
from ..runtime.brokers import BROKERS, PAPER


def broker_of(config: object) -> tuple[str, str]:
    """An engine config's broker and account ("paper", "" when not given)."""
    if not isinstance(config, Mapping):
        return PAPER, ""
    options = config.get("broker_options")
    account = options.get("account", "") if isinstance(options, Mapping) else ""
    return config.get("broker", PAPER), account


def exchange_engines() -> list[tuple[str, str]]:
    """(symbol, broker) of every engine trading on an exchange (testnet or live)."""
    rows = Engine.objects.values_list("symbol", "config")
    out = []
    for symbol, config in rows:
        broker, _ = broker_of(config)
        if broker != PAPER:
            out.append((symbol, broker))
    return out


def broker_summary(config: Any) -> dict[str, str]:
    """What the dashboard and the API show of an engine's broker: its mode, and the
    exchange of its feed ("" for a simulated or replayed one)."""
    broker, _ = broker_of(config)
    options = config.get("feed_options") if isinstance(config, Mapping) else None
    exchange = options.get("exchange", "") if isinstance(options, Mapping) else ""
    return {
        "broker": broker if broker in BROKERS else PAPER,
        "exchange": exchange if isinstance(exchange, str) else "",
    }
