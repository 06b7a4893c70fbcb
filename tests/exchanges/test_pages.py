"""Broker mode and exchange on the dashboard, the admin and the API; the kill switch from
each; account keys absent from every page and answer."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Permission
from django.test import Client

from engines_app.models import Engine, EngineCommand, ExchangeAccount, KillSwitch
from engines_app.runtime.brokers import LIVE_ENV
from engines_app.services import account_save
from engines_app.vault import KEYS_ENV
from tests.helpers import bearer

pytestmark = pytest.mark.django_db

API_KEY, SECRET = "key-page-2b7d", "secret-page-8e1f"
FEED = {"feed": "ccxt", "feed_options": {"exchange": "binance", "market": "BTC/USDT"}}


@pytest.fixture(autouse=True)
def fernet(monkeypatch):
    monkeypatch.setenv(KEYS_ENV, Fernet.generate_key().decode())
    monkeypatch.setenv(LIVE_ENV, "1")


def staff(django_user_model, name: str, *codenames: str):
    user = django_user_model.objects.create_user(name, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def operator(django_user_model):
    codenames = ("control_engine", "view_engine", "change_engine", "add_engine")
    return staff(
        django_user_model,
        "operator",
        *codenames,
        "add_exchangeaccount",
        "change_exchangeaccount",
        "view_exchangeaccount",
        "view_killswitch",
    )


@pytest.fixture
def viewer(django_user_model):
    return staff(django_user_model, "viewer", "view_engine")


@pytest.fixture
def fleet(db):
    account_save(name="main", exchange="binance", testnet=False, api_key=API_KEY, secret=SECRET)
    Engine.objects.create(
        symbol="BTCUSDT", config=FEED | {"broker": "live", "broker_options": {"account": "main"}}
    )
    Engine.objects.create(symbol="ETHUSDT")


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_api_shows_broker_and_exchange_and_never_a_key(fleet, operator):
    client = Client()
    fleet_status = client.get("/engines/status", **bearer(operator)).json()
    shown = {e["symbol"]: (e["broker"], e["exchange"]) for e in fleet_status["engines"]}
    assert shown == {"BTCUSDT": ("live", "binance"), "ETHUSDT": ("paper", "")}
    one = client.get("/engines/status/BTCUSDT", **bearer(operator)).json()
    assert (one["broker"], one["exchange"]) == ("live", "binance")
    assert API_KEY not in json.dumps(fleet_status) and SECRET not in json.dumps(one)


def test_the_dashboard_shows_the_mode_and_offers_the_kill_switch_to_operators(
    fleet, operator, viewer
):
    page = logged_in(operator).get("/").content.decode()
    assert '"broker": "live"' in page and 'id="kill-switch"' in page
    assert API_KEY not in page and SECRET not in page
    assert 'id="kill-switch"' not in logged_in(viewer).get("/").content.decode()
    assert logged_in(viewer).post("/kill-switch/").status_code == 403
    assert not KillSwitch.objects.exists()
    assert Engine.objects.get(symbol="BTCUSDT").desired_state == "running"


def test_the_dashboard_kill_switch_stops_live_engines(fleet, operator):
    response = logged_in(operator).post("/kill-switch/", {"close_positions": "on"})
    assert response.status_code == 302
    [pulled] = KillSwitch.objects.all()
    assert (pulled.symbols, pulled.close_positions, pulled.source) == (
        ["BTCUSDT"],
        True,
        "dashboard",
    )
    assert EngineCommand.objects.get(symbol="BTCUSDT").action == "kill_close"
    assert Engine.objects.get(symbol="ETHUSDT").desired_state == "running"


def test_the_api_kill_switch(fleet, operator, viewer):
    client = Client()
    refused = client.post("/engines/kill-switch", "{}", "application/json", **bearer(viewer))
    assert refused.status_code == 403 and not KillSwitch.objects.exists()
    answer = client.post("/engines/kill-switch", "{}", "application/json", **bearer(operator))
    assert answer.status_code == 202
    assert answer.json()["symbols"] == ["BTCUSDT"] and not answer.json()["close_positions"]
    assert Engine.objects.get(symbol="BTCUSDT").desired_state == "stopped"


def test_the_admin_kill_switch_needs_its_confirmation(fleet, operator):
    client = logged_in(operator)
    page = client.get("/admin/engines_app/killswitch/add/")
    assert page.status_code == 200 and b"Pull the kill switch" in page.content
    unconfirmed = client.post("/admin/engines_app/killswitch/add/", {})
    assert unconfirmed.status_code == 200 and not KillSwitch.objects.exists()
    client.post("/admin/engines_app/killswitch/add/", {"confirm": "on"})
    assert KillSwitch.objects.get().source == "admin"


def test_admin_account_keys_are_write_only_and_encrypted(db, operator):
    client = logged_in(operator)
    form = {"name": "sandbox", "exchange": "binance", "testnet": "on"}
    missing = client.post("/admin/engines_app/exchangeaccount/add/", form)
    assert b"a new account needs its API key and secret" in missing.content
    assert not ExchangeAccount.objects.exists()
    created = client.post(
        "/admin/engines_app/exchangeaccount/add/", form | {"api_key": API_KEY, "secret": SECRET}
    )
    assert created.status_code == 302
    account = ExchangeAccount.objects.get()
    assert account.testnet and API_KEY not in account.api_key_encrypted
    change = client.get(f"/admin/engines_app/exchangeaccount/{account.pk}/change/").content
    listing = client.get("/admin/engines_app/exchangeaccount/").content
    for page in (change, listing):
        assert API_KEY.encode() not in page and SECRET.encode() not in page
    assert b"stored (encrypted)" in listing


def test_admin_refuses_a_live_config_without_the_permission(fleet, operator):
    client = logged_in(operator)
    engine = Engine.objects.get(symbol="ETHUSDT")
    config = FEED | {"broker": "live", "broker_options": {"account": "main"}}
    response = client.post(
        f"/admin/engines_app/engine/{engine.pk}/change/",
        {"desired_state": "running", "cycle_interval": "", "config": json.dumps(config)},
    )
    assert response.status_code == 200
    assert b"needs the permission engines_app.trade_live" in response.content
    engine.refresh_from_db()
    assert engine.config == {} and not EngineCommand.objects.filter(engine=engine).exists()
