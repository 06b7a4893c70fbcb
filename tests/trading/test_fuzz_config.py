"""Hypothesis-made engine configs (random keys and values, nested, NaN and Infinity, huge
numbers, wrong types) through the three doors an operator has: ``EngineConfig``'s
validation, the ``engine_add`` / ``engine_configure`` services and the admin form. A bad
config is refused with its reason (a ``ConfigError``, a ``ValidationError``, a form error)
and changes nothing; nothing else is ever raised."""

from __future__ import annotations

import dataclasses
import json
import math
from itertools import count
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.forms.models import model_to_dict
from django.test import Client
from hypothesis import example, given
from hypothesis import strategies as st

from engines_app.models import Engine, EngineCommand
from engines_app.runtime.engine import EngineConfig
from engines_app.runtime.errors import ConfigError
from engines_app.runtime.feeds import FEEDS
from engines_app.runtime.strategies import STRATEGIES
from engines_app.services.engines import engine_add, engine_configure
from tests.helpers import fuzz_settings

CHANGELIST = "/admin/engines_app/engine/"
OPTIONS = [
    f.name
    for f in dataclasses.fields(EngineConfig)
    if f.init and f.name not in ("symbol", "cycle_interval")
]
FEED_OPTIONS = [
    "price",
    "volatility",
    "seed",
    "file",
    "loop",
    "prices",
    "url",
    "reconnect_base",
    "reconnect_cap",
]
PARAMS = ["fast", "slow", "lookback", "allow_short"]

huge = st.integers(min_value=2**1024, max_value=10**400)  # past any float
numbers = st.integers() | st.floats() | huge | huge.map(lambda n: -n)
scalars = st.none() | st.booleans() | numbers | st.text(max_size=20)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
urls = st.from_regex(r"wss?://[^\s]{0,30}", fullmatch=True) | st.text(max_size=30)
special = {
    "feed": st.sampled_from(FEEDS) | values,
    "strategy": st.sampled_from(sorted(STRATEGIES)) | values,
    "feed_options": st.dictionaries(
        st.sampled_from(FEED_OPTIONS) | st.text(max_size=8),
        values | urls | st.lists(numbers, min_size=1, max_size=4),
        max_size=4,
    )
    | values,
    "params": st.dictionaries(st.sampled_from(PARAMS) | st.text(max_size=8), values, max_size=4)
    | values,
}
option_names = st.sampled_from(OPTIONS) | st.text(max_size=12)
objects = st.lists(option_names, unique=True, max_size=6).flatmap(
    lambda names: st.fixed_dictionaries({name: special.get(name, values) for name in names})
)
configs = objects | values  # mostly objects, sometimes any other JSON value
intervals = st.none() | numbers


def validated(interval: Any, config: Any) -> str | None:
    """Validate as the admin and the runner do; the reason it is refused, or None."""
    try:
        EngineConfig.from_options("BTCUSDT", interval, config).validate()
    except ConfigError as exc:
        assert str(exc), "a refusal without a reason"
        return str(exc)
    return None


def stored(value: Any) -> str:
    """A config as its JSON column holds it (NaN compares unequal to itself)."""
    return json.dumps(value, sort_keys=True)


@given(interval=intervals, config=configs)
@example(interval=None, config={"order_qty": 10**400})  # ints past any float, once a crash
@example(interval=None, config={"feed": "prices", "feed_options": {"prices": [10**400]}})
@example(interval=None, config={"feed_options": {"price": -(10**400)}})
@example(interval=None, config={"feed": "ws", "feed_options": {"reconnect_cap": 10**400}})
@fuzz_settings(300)
def test_a_config_is_valid_or_refused_with_its_reason(interval, config):
    problem = validated(interval, config)
    if problem is None:  # what runs must be made of finite numbers
        assert "NaN" not in stored(config) and "Infinity" not in stored(config)
        assert interval is None or math.isfinite(interval)


# The services and the admin form, on the test database ----------------------------------

symbols = (f"FZ{n}" for n in count())


def database() -> tuple[list[dict[str, Any]], int]:
    rows = [
        {**model_to_dict(engine), "config": stored(engine.config)}
        for engine in Engine.objects.order_by("pk")
    ]
    return rows, EngineCommand.objects.count()


@pytest.fixture
def engine(db) -> Engine:
    return Engine.objects.create(symbol="BTCUSDT", config={"seed": 7})


@pytest.fixture
def admin_client(db, django_user_model) -> Client:
    user = django_user_model.objects.create_user("operator", is_staff=True)
    codenames = ("view_engine", "change_engine", "add_engine", "control_engine")
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@given(interval=intervals, config=configs)
@example(interval=10**400, config={})  # Django's FloatField raised OverflowError
@example(interval=None, config={"daily_loss_limit": 10**400})
@fuzz_settings(100)
def test_the_services_refuse_a_bad_config_and_change_nothing(engine, interval, config):
    current = Engine.objects.get(pk=engine.pk).config  # None: configure leaves it as it is
    problem = validated(interval, current if config is None else config)
    before = database()
    try:
        engine_configure(symbol=engine.symbol, config=config, cycle_interval=interval)
    except ValidationError as exc:
        assert problem is not None and exc.messages and all(exc.messages)
        assert database() == before
    else:
        assert problem is None, f"configure accepted a config refused with: {problem}"
    problem = validated(interval, config)
    before = database()
    try:
        engine_add(symbol=next(symbols), config=config, cycle_interval=interval)
    except ValidationError as exc:
        assert exc.messages and all(exc.messages)
        assert database() == before
    else:
        assert problem is None or config in ({}, [], "", 0, False, None)  # add treats it as {}


texts = (
    configs.map(json.dumps)
    | st.text(max_size=60)  # mostly not JSON
    | st.integers(10, 50_000).map(lambda depth: "[" * depth + "]" * depth)
    | st.integers(4300, 6000).map(lambda digits: '{"seed": ' + "9" * digits + "}")
)


@given(config=texts, interval=st.none() | st.floats().map(str) | st.text(max_size=10))
@example(config="[" * 100_000 + "]" * 100_000, interval=None)  # RecursionError: once a 500
@example(config='{"seed": ' + "9" * 5000 + "}", interval=None)  # ValueError: once a 500
@fuzz_settings(60)
def test_the_admin_form_refuses_a_bad_config_and_changes_nothing(
    admin_client, engine, config, interval
):
    for url, symbol in (
        (f"{CHANGELIST}add/", next(symbols)),
        (f"{CHANGELIST}{engine.pk}/change/", ""),
    ):
        before = database()
        form = {
            "symbol": symbol,
            "desired_state": "running",
            "cycle_interval": interval or "",
            "config": config,
        }
        response = admin_client.post(url, form)
        assert response.status_code in (200, 302), response.status_code
        if response.status_code == 200:  # the form again, saying what is wrong
            errors = response.context["adminform"].form.errors
            assert errors and all(errors.values()), errors
            assert database() == before
