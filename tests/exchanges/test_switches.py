"""The switches toward real orders, in their order: the installation's setting, the
permission, encrypted keys; and the kill switch. A refusal says why and changes nothing."""

from __future__ import annotations

import logging

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError

from engines_app.models import Alert, Engine, EngineCommand, ExchangeAccount, KillSwitch
from engines_app.runner import store
from engines_app.runtime.brokers import LIVE_ENV, LIVE_OFF
from engines_app.services import (
    LiveTradingRefused,
    account_save,
    engine_add,
    engine_configure,
    engine_set_broker,
    kill_switch,
)
from engines_app.vault import KEYS_ENV, VaultError
from tests.helpers import make_user

pytestmark = pytest.mark.django_db

API_KEY, SECRET = "key-switch-61b0", "secret-switch-d3c7"
FEED = {"feed": "ccxt", "feed_options": {"exchange": "binance", "market": "BTC/USDT"}}


@pytest.fixture(autouse=True)
def fernet(monkeypatch: pytest.MonkeyPatch) -> str:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(KEYS_ENV, key)
    return key


@pytest.fixture
def accounts(db) -> None:
    account_save(name="main", exchange="binance", testnet=False, api_key=API_KEY, secret=SECRET)
    account_save(name="sandbox", exchange="binance", api_key="k2", secret="s2")


@pytest.fixture
def btc(db, accounts) -> Engine:
    return Engine.objects.create(symbol="BTCUSDT", config=dict(FEED))


@pytest.fixture
def trader(django_user_model):
    user = make_user(django_user_model, "trader", control=True)
    user.user_permissions.add(Permission.objects.get(codename="trade_live"))
    return django_user_model.objects.get(pk=user.pk)  # permissions cache fresh


@pytest.fixture
def operator(django_user_model):
    return make_user(django_user_model, "operator", control=True)


def unchanged(engine: Engine) -> bool:
    before = dict(engine.config)
    engine.refresh_from_db()
    return engine.config == before and not EngineCommand.objects.filter(engine=engine).exists()


def test_live_is_refused_while_the_installation_setting_is_off(btc, trader, monkeypatch):
    monkeypatch.delenv(LIVE_ENV, raising=False)
    with pytest.raises(LiveTradingRefused, match="live trading is off for this installation"):
        engine_set_broker(symbol="BTCUSDT", broker="live", account="main", user=trader)
    assert unchanged(btc)
    monkeypatch.setenv(LIVE_ENV, "0")
    with pytest.raises(LiveTradingRefused, match=LIVE_OFF.split("(")[0].strip()):
        engine_configure(
            symbol="BTCUSDT",
            config=FEED | {"broker": "live", "broker_options": {"account": "main"}},
            user=trader,
        )
    assert unchanged(btc)


def test_live_is_refused_without_the_permission(btc, operator, monkeypatch):
    monkeypatch.setenv(LIVE_ENV, "1")
    refused = "setting or changing a live broker needs the permission engines_app.trade_live"
    with pytest.raises(LiveTradingRefused, match=refused):
        engine_set_broker(symbol="BTCUSDT", broker="live", account="main", user=operator)
    with pytest.raises(LiveTradingRefused, match=refused):  # the shell: nobody's permission
        engine_set_broker(symbol="BTCUSDT", broker="live", account="main")
    with pytest.raises(LiveTradingRefused, match=refused):
        engine_add(
            symbol="ETHUSDT",
            config=FEED | {"broker": "live", "broker_options": {"account": "main"}},
            user=operator,
        )
    assert unchanged(btc) and not Engine.objects.filter(symbol="ETHUSDT").exists()


def test_a_permitted_operator_sets_live_and_the_command_is_recorded(btc, trader, monkeypatch):
    monkeypatch.setenv(LIVE_ENV, "1")
    command = engine_set_broker(
        symbol="BTCUSDT", broker="live", account="main", user=trader, source="api"
    )
    btc.refresh_from_db()
    assert btc.config == FEED | {"broker": "live", "broker_options": {"account": "main"}}
    assert (command.action, command.user, command.source) == ("set_broker", trader, "api")
    # Back to paper also needs the permission (it changes a live engine).
    with pytest.raises(LiveTradingRefused):
        engine_set_broker(symbol="BTCUSDT", broker="paper", user=None)
    engine_set_broker(symbol="BTCUSDT", broker="paper", user=trader)
    btc.refresh_from_db()
    assert btc.config == FEED


def test_testnet_needs_no_live_permission_and_a_bad_account_changes_nothing(btc, operator):
    command = engine_set_broker(
        symbol="BTCUSDT", broker="testnet", account="sandbox", user=operator
    )
    assert command.action == "set_broker"
    with pytest.raises(ValidationError, match="no exchange account named 'nope'"):
        engine_set_broker(symbol="BTCUSDT", broker="testnet", account="nope", user=operator)
    btc.refresh_from_db()
    assert btc.config["broker_options"] == {"account": "sandbox"}


def test_keys_are_encrypted_at_rest_and_read_back_only_by_the_runner(accounts, fernet):
    row = ExchangeAccount.objects.get(name="main")
    stored = " ".join(
        str(v) for v in ExchangeAccount.objects.filter(pk=row.pk).values().first().values()
    )
    assert API_KEY not in stored and SECRET not in stored
    assert Fernet(fernet).decrypt(row.api_key_encrypted.encode()).decode() == API_KEY
    account = store.exchange_account("main")
    assert (account.credentials.api_key, account.credentials.secret) == (API_KEY, SECRET)
    assert API_KEY not in repr(account) and SECRET not in str(account.credentials)
    assert store.exchange_account("nope") is None


def test_without_the_fernet_key_nothing_is_stored(db, monkeypatch):
    monkeypatch.delenv(KEYS_ENV)
    with pytest.raises(VaultError, match=f"{KEYS_ENV} is not set"):
        account_save(name="x", exchange="binance", api_key="k", secret="s")
    assert not ExchangeAccount.objects.exists()
    monkeypatch.setenv(KEYS_ENV, "not-a-key")
    with pytest.raises(VaultError, match="not a Fernet key"):
        account_save(name="x", exchange="binance", api_key="k", secret="s")
    assert not ExchangeAccount.objects.exists()


def test_a_key_changed_under_the_accounts_is_a_clear_error(accounts, monkeypatch):
    monkeypatch.setenv(KEYS_ENV, Fernet.generate_key().decode())
    from engines_app.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="does not decrypt"):
        store.exchange_account("main")


def test_an_unknown_exchange_is_refused(db):
    with pytest.raises(ValidationError, match="not one ccxt supports"):
        account_save(name="x", exchange="nosuch", api_key="k", secret="s")


def test_the_kill_switch_stops_every_exchange_engine_recorded_and_alerted(
    accounts, trader, monkeypatch, caplog
):
    monkeypatch.setenv(LIVE_ENV, "1")
    caplog.set_level(logging.INFO)
    paper = Engine.objects.create(symbol="SOLUSDT")
    for symbol, broker, account in (("BTCUSDT", "live", "main"), ("ETHUSDT", "testnet", "sandbox")):
        Engine.objects.create(
            symbol=symbol,
            config=FEED | {"broker": broker, "broker_options": {"account": account}},
        )
    pulled = kill_switch(close_positions=True, user=trader, source="dashboard")
    assert pulled.symbols == ["BTCUSDT", "ETHUSDT"] and pulled.close_positions
    assert (pulled.user, pulled.source) == (trader, "dashboard")
    stopped = Engine.objects.filter(desired_state="stopped")
    assert sorted(stopped.values_list("symbol", flat=True)) == ["BTCUSDT", "ETHUSDT"]
    commands = EngineCommand.objects.filter(action="kill_close")
    assert sorted(c.symbol for c in commands) == ["BTCUSDT", "ETHUSDT"]
    paper.refresh_from_db()
    assert paper.desired_state == "running"
    [alert] = Alert.objects.filter(kind="kill_switch")
    assert alert.key == "fleet" and "KILL SWITCH pulled by trader" in alert.text
    assert "BTCUSDT, ETHUSDT" in alert.text and "closing their positions" in alert.text
    assert KillSwitch.objects.count() == 1


def test_a_position_mismatch_is_alerted_with_its_reason(db):
    from engines_app.alerts.rules import engine_events, handle_engine_events
    from engines_app.runner.store import StatusRow

    engine = Engine.objects.create(symbol="BTCUSDT")
    reason = (
        "fatal error: not restarted (PositionMismatch: position mismatch on binance BTC/USDT: "
        "the exchange holds 0.7 BTC (base_offset 0 taken off), the book 0; stopped, nothing "
        "guessed)"
    )
    row = StatusRow(engine.id, "failed", reason, None, 1, 4, None, 1, reason)
    handle_engine_events(engine_events([row], [], []))
    [alert] = Alert.objects.filter(kind="failed")
    assert alert.key == "BTCUSDT" and "position mismatch on binance BTC/USDT" in alert.text
