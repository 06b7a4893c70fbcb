"""The services behind the admin, the API and the dashboard, called alone as from the shell:
every operator change is a command in the audit trail, a bad one changes nothing."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from engines_app.models import Engine, EngineCommand
from engines_app.services import EngineNotFound, engine_configure
from tests.helpers import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def btc(db) -> Engine:
    return Engine.objects.create(symbol="BTCUSDT", status="running", total_pnl=12.5)


def test_configure_changes_the_settings_and_records_who_and_from_where(btc, django_user_model):
    operator = make_user(django_user_model, "operator", control=True)
    command = engine_configure(
        symbol="BTCUSDT", config={"seed": 7}, cycle_interval=0.5, user=operator, source="api"
    )
    btc.refresh_from_db()
    assert (btc.config, btc.cycle_interval) == ({"seed": 7}, 0.5)
    assert (command.action, command.engine, command.user, command.source) == (
        "configure",
        btc,
        operator,
        "api",
    )
    assert command.outcome == "pending" and command.created_at is not None


def test_configure_from_the_shell_leaves_out_what_it_does_not_change(btc):
    Engine.objects.filter(pk=btc.pk).update(cycle_interval=2.0)
    command = engine_configure(symbol="BTCUSDT", config={"strategy": "breakout"})
    btc.refresh_from_db()
    assert (btc.config, btc.cycle_interval) == ({"strategy": "breakout"}, 2.0)
    assert (command.user, command.source) == (None, "shell")
    engine_configure(symbol="BTCUSDT", cycle_interval=None)  # back to the default
    btc.refresh_from_db()
    assert (btc.config, btc.cycle_interval) == ({"strategy": "breakout"}, None)
    assert EngineCommand.objects.filter(action="configure").count() == 2


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"config": {"crash_probability": 2}}, "config", "between 0 and 1"),
        ({"config": {"colour": "red"}}, "config", "unknown engine option"),
        ({"config": [1, 2]}, "config", "JSON object"),
        ({"cycle_interval": 0}, "cycle_interval", "greater than 0"),
        ({"cycle_interval": 86401}, "cycle_interval", "at most 86400"),
    ],
)
def test_a_bad_setting_is_refused_with_the_reason_and_changes_nothing(
    btc, settings, field, message
):
    with pytest.raises(ValidationError) as refused:
        engine_configure(symbol="BTCUSDT", **settings)
    assert message in " ".join(refused.value.message_dict[field])
    btc.refresh_from_db()
    assert (btc.config, btc.cycle_interval) == ({}, None)
    assert not EngineCommand.objects.exists()


def test_an_edit_that_changes_nothing_records_nothing(btc):
    assert engine_configure(symbol="BTCUSDT", config={}, cycle_interval=None) is None
    assert not EngineCommand.objects.exists()


def test_configuring_an_unknown_engine_is_refused(db):
    with pytest.raises(EngineNotFound, match="no engine with symbol ADAUSDT"):
        engine_configure(symbol="ADAUSDT", config={"seed": 1})
    assert not EngineCommand.objects.exists()
