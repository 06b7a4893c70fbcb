"""Hypothesis-made messages on the exchange's stream: each is a price, nothing for this
engine, or refused as malformed (counted and reported; the feed keeps running). Nothing
else is ever raised."""

from __future__ import annotations

import json
import math

from hypothesis import example, given
from hypothesis import strategies as st

from engines_app.runtime.feeds.ws import MalformedMessage, parse_price
from tests.helpers import fuzz_settings

numbers = st.integers() | st.floats() | st.integers(min_value=2**1024, max_value=10**400)
scalars = st.none() | st.booleans() | numbers | st.text(max_size=12)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
prices = numbers | numbers.map(str) | values
messages = st.fixed_dictionaries(
    {"e": st.sampled_from(["kline", "trade", "aggTrade"]) | values},
    optional={
        "p": prices,
        "k": st.fixed_dictionaries({}, optional={"c": prices}) | values,
        "s": st.just("BTCUSDT") | values,
    },
)
combined = messages.map(lambda data: {"stream": "btcusdt@trade", "data": data})
raws = (
    st.one_of(messages, combined, values).map(json.dumps)
    | st.text(max_size=80)
    | st.binary(max_size=80)
    | st.integers(10, 50_000).map(lambda depth: "[" * depth + "]" * depth)
)


@given(raw=raws)
@example(raw='{"e": "trade", "p": ' + "9" * 400 + "}")  # float() of it: once OverflowError
@example(raw="[" * 100_000 + "]" * 100_000)  # once RecursionError
@fuzz_settings(300)
def test_a_stream_message_is_a_price_or_malformed(raw):
    try:
        price = parse_price(raw, "BTCUSDT")
    except MalformedMessage as exc:
        assert str(exc)
    else:
        assert price is None or (math.isfinite(price) and price > 0)
