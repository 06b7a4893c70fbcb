"""The admin, through Django's test client: actions only with the control permission,
every change recorded as a command, runner-owned fields never written back."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client

from engines_app.models import ApiToken, Engine, EngineCommand, EngineError, EngineRestart
from tests.helpers import heartbeat, hold

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/engines_app/engine/"
MODEL_PERMISSIONS = ("view_engine", "change_engine", "add_engine", "delete_engine")


def staff(django_user_model, name: str, *codenames: str):
    user = django_user_model.objects.create_user(name, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def operator(django_user_model):
    return staff(
        django_user_model,
        "operator",
        *MODEL_PERMISSIONS,
        "control_engine",
        "view_enginerestart",
        "view_engineerror",
        "view_enginecommand",
    )


@pytest.fixture
def watcher(django_user_model):
    return staff(django_user_model, "watcher", *MODEL_PERMISSIONS)


@pytest.fixture
def engines(db):
    now = datetime.now(UTC)
    return {
        "BTCUSDT": Engine.objects.create(
            symbol="BTCUSDT",
            status="running",
            started_at=now,
            last_heartbeat=now,
            total_pnl=12.5,
            trade_count=3,
        ),
        "ETHUSDT": Engine.objects.create(symbol="ETHUSDT", status="crashed"),
        "SOLUSDT": Engine.objects.create(symbol="SOLUSDT", status="failed"),
        "XRPUSDT": Engine.objects.create(
            symbol="XRPUSDT", status="stopped", desired_state="stopped"
        ),
    }


def as_user(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def action(client: Client, name: str, *symbols: str):
    ids = [Engine.objects.get(symbol=symbol).pk for symbol in symbols]
    return client.post(CHANGELIST, {"action": name, "_selected_action": ids}, follow=True)


def commands() -> list[tuple[str, str, str, str]]:
    return list(
        EngineCommand.objects.order_by("id").values_list(
            "symbol", "action", "source", "user__username"
        )
    )


# The list ----------------------------------------------------------------------------


def test_the_list_shows_status_heartbeat_uptime_and_results(engines, operator):
    response = as_user(operator).get(CHANGELIST)
    assert response.status_code == 200
    page = response.content.decode()
    for column in (
        "Heartbeat age",
        "Uptime",
        "Position",
        "Daily pnl",
        "Total pnl",
        "Trade count",
        "Error count",
    ):
        assert column in page
    assert "12.5" in page and "0 s" in page
    assert 'id="restart-crashed"' in page and "Restart crashed/failed (2)" in page


def test_filter_by_status_and_search_by_symbol(engines, operator):
    client = as_user(operator)
    crashed = client.get(CHANGELIST, {"status__exact": "crashed"})
    assert list(crashed.context["cl"].result_list) == [engines["ETHUSDT"]]
    found = client.get(CHANGELIST, {"q": "sol"})
    assert list(found.context["cl"].result_list) == [engines["SOLUSDT"]]


@pytest.fixture
def silent_runner(engines):
    """runner-a holds BTCUSDT; runner-b, silent for a minute, held ETHUSDT until its lease
    ran out (its row still says crashed)."""
    heartbeat("runner-a", host="host-1", pid=11, held=1, engines=1)
    heartbeat("runner-b", last_seen=datetime.now(UTC) - timedelta(seconds=60))
    hold([engines["BTCUSDT"]], "runner-a")
    hold([engines["ETHUSDT"]], "runner-b", seconds=-45)


def test_the_list_shows_the_runner_and_the_truthful_status(engines, operator, silent_runner):
    response = as_user(operator).get(CHANGELIST)
    rows = {engine.symbol: engine for engine in response.context["cl"].result_list}
    admin = response.context["cl"].model_admin
    shown = {symbol: admin.shown_status(engine) for symbol, engine in rows.items()}
    assert shown == {
        "BTCUSDT": "Running",
        "ETHUSDT": "Unknown",
        "SOLUSDT": "Failed (needs an operator)",
        "XRPUSDT": "Stopped",
    }
    assert admin.runner(rows["BTCUSDT"]) == "runner-a"
    assert admin.runner(rows["ETHUSDT"]).startswith("none (was runner-b, last seen 1 min ")
    assert admin.runner(rows["XRPUSDT"]) == "-"
    page = response.content.decode()
    assert "Runner" in page and "runner-a" in page and "Unknown" in page


@pytest.mark.parametrize(
    ("status", "symbols"),
    [("unknown", ["ETHUSDT"]), ("running", ["BTCUSDT"]), ("crashed", []), ("failed", ["SOLUSDT"])],
)
def test_filter_by_the_status_shown(engines, operator, silent_runner, status, symbols):
    response = as_user(operator).get(CHANGELIST, {"status": status})
    assert [engine.symbol for engine in response.context["cl"].result_list] == symbols


def test_runners_page_lists_each_runner_and_whether_it_is_live(
    engines, silent_runner, django_user_model
):
    client = as_user(django_user_model.objects.create_superuser("root"))
    response = client.get("/admin/engines_app/runnerheartbeat/")
    assert response.status_code == 200
    admin = response.context["cl"].model_admin
    live = {runner.name: admin.live(runner) for runner in response.context["cl"].result_list}
    assert live == {"runner-a": True, "runner-b": False}
    page = response.content.decode()
    for column in ("Host", "Pid", "Held", "Engines", "Started at", "Last seen", "Stopped at"):
        assert column in page
    assert "host-1" in page
    assert client.get("/admin/engines_app/runnerheartbeat/add/").status_code == 403


# Actions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "verb", "desired"),
    [
        ("start_engines", "Start", "running"),
        ("stop_engines", "Stop", "stopped"),
        ("restart_engines", "Restart", "running"),
    ],
)
def test_actions_go_through_the_services_and_say_what_they_did(
    engines, operator, name, verb, desired
):
    response = action(as_user(operator), name, "BTCUSDT", "XRPUSDT")
    assert response.status_code == 200
    assert messages_of(response) == [
        f"{verb} requested for 2 engine(s): BTCUSDT, XRPUSDT. "
        "The runner carries it out within a second."
    ]
    action_name = verb.lower()
    assert commands() == [
        ("BTCUSDT", action_name, "admin", "operator"),
        ("XRPUSDT", action_name, "admin", "operator"),
    ]
    assert {e.desired_state for e in Engine.objects.filter(symbol__in=["BTCUSDT", "XRPUSDT"])} == {
        desired
    }


def test_without_the_control_permission_there_are_no_actions(engines, watcher):
    client = as_user(watcher)
    page = client.get(CHANGELIST)
    form = page.context["action_form"]  # only "delete selected" could be left, and it is not
    assert form is None
    assert b'id="restart-crashed"' not in page.content
    assert action(client, "stop_engines", "BTCUSDT").status_code == 200  # ignored
    assert client.post(f"{CHANGELIST}restart-crashed/").status_code == 403
    assert not EngineCommand.objects.exists()
    assert Engine.objects.get(symbol="BTCUSDT").desired_state == "running"


def test_restart_crashed_and_failed_is_one_click(engines, operator):
    # An engine its daily loss limit halted stays halted: that stop was on purpose.
    Engine.objects.create(symbol="ADAUSDT", status="halted", status_reason="daily loss limit")
    client = as_user(operator)
    assert "Restart crashed/failed (2)" in client.get(CHANGELIST).content.decode()
    response = client.post(f"{CHANGELIST}restart-crashed/", follow=True)
    assert response.redirect_chain == [(CHANGELIST, 302)]
    assert messages_of(response) == [
        "Restart requested for 2 engine(s): ETHUSDT, SOLUSDT. "
        "The runner carries it out within a second."
    ]
    assert [c[:2] for c in commands()] == [("ETHUSDT", "restart"), ("SOLUSDT", "restart")]
    assert Engine.objects.get(symbol="SOLUSDT").failures_reset_at is not None
    assert client.get(f"{CHANGELIST}restart-crashed/").status_code == 405
    Engine.objects.filter(status__in=["crashed", "failed"]).update(status="running")
    again = client.post(f"{CHANGELIST}restart-crashed/", follow=True)
    assert messages_of(again) == ["No crashed or failed engines."]


# Add, change, delete -------------------------------------------------------------------


def test_adding_an_engine_records_an_add_command(db, operator):
    response = as_user(operator).post(
        f"{CHANGELIST}add/",
        {
            "symbol": "ADAUSDT",
            "desired_state": "running",
            "cycle_interval": "0.5",
            "config": '{"seed": 7}',
        },
        follow=True,
    )
    assert response.status_code == 200
    engine = Engine.objects.get(symbol="ADAUSDT")
    assert (engine.cycle_interval, engine.config) == (0.5, {"seed": 7})
    assert commands() == [("ADAUSDT", "add", "admin", "operator")]
    assert "Engine ADAUSDT added (the runner starts it)." in messages_of(response)


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"symbol": "btc"}, "symbol", "upper-case"),
        ({"symbol": "BTCUSDT"}, "symbol", "already exists"),
        ({"cycle_interval": "0"}, "cycle_interval", "greater than 0"),
        ({"cycle_interval": "-1"}, "cycle_interval", "greater than 0"),
        ({"cycle_interval": "86401"}, "cycle_interval", "at most 86400"),
        ({"cycle_interval": "1e308"}, "cycle_interval", "at most 86400"),
        ({"config": '{"crash_probability": 2}'}, "config", "between 0 and 1"),
        ({"config": '{"colour": "red"}'}, "config", "unknown engine option"),
        ({"config": "[1, 2]"}, "config", "JSON object"),
        ({"config": "{not json"}, "config", "Enter a valid JSON"),
    ],
)
def test_an_invalid_new_engine_is_refused_in_the_form(engines, operator, data, field, message):
    form = {
        "symbol": "ADAUSDT",
        "desired_state": "running",
        "cycle_interval": "",
        "config": "{}",
        **data,
    }
    response = as_user(operator).post(f"{CHANGELIST}add/", form)
    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors[field])
    assert not EngineCommand.objects.exists()
    assert Engine.objects.count() == 4


def test_adding_needs_the_control_permission(db, watcher):
    response = as_user(watcher).post(f"{CHANGELIST}add/", {"symbol": "ADAUSDT"})
    assert response.status_code == 403
    assert not Engine.objects.exists()


def change(client: Client, engine: Engine, **data):
    form = {
        "desired_state": engine.desired_state,
        "cycle_interval": engine.cycle_interval or "",
        "config": "{}",
        **data,
    }
    return client.post(f"{CHANGELIST}{engine.pk}/change/", form, follow=True)


def test_editing_settings_never_overwrites_what_the_runner_wrote(engines, operator):
    client = as_user(operator)
    btc = engines["BTCUSDT"]
    page = client.get(f"{CHANGELIST}{btc.pk}/change/")  # the form as the operator saw it
    assert page.status_code == 200
    # Meanwhile the runner writes a heartbeat, PnL and a new status.
    Engine.objects.filter(pk=btc.pk).update(status="backoff", total_pnl=99.0, trade_count=42)
    response = change(client, btc, cycle_interval="0.25", config='{"seed": 3}')
    assert response.status_code == 200
    btc.refresh_from_db()
    assert (btc.cycle_interval, btc.config) == (0.25, {"seed": 3})
    assert (btc.status, btc.total_pnl, btc.trade_count) == ("backoff", 99.0, 42)
    assert any("cycle_interval, config changed" in m for m in messages_of(response))


def test_a_settings_edit_is_a_configure_command_in_the_history(engines, operator):
    client = as_user(operator)
    btc = engines["BTCUSDT"]
    response = change(client, btc, config='{"seed": 3}')
    assert response.status_code == 200
    assert commands() == [("BTCUSDT", "configure", "admin", "operator")]
    page = client.get(f"{CHANGELIST}{btc.pk}/change/").content.decode()
    assert "Recent commands" in page and "Configure" in page
    listed = client.get("/admin/engines_app/enginecommand/", {"action__exact": "configure"})
    assert [c.symbol for c in listed.context["cl"].result_list] == ["BTCUSDT"]


def test_saving_unchanged_settings_records_nothing(engines, operator):
    response = change(as_user(operator), engines["BTCUSDT"])
    assert response.status_code == 200
    assert not EngineCommand.objects.exists()


def test_an_invalid_setting_is_refused_and_nothing_changes(engines, operator):
    btc = engines["BTCUSDT"]
    response = change(as_user(operator), btc, config='{"crash_probability": -1}')
    assert "between 0 and 1" in " ".join(response.context["adminform"].form.errors["config"])
    btc.refresh_from_db()
    assert btc.config == {}
    assert not EngineCommand.objects.exists()


def test_a_slow_cycle_interval_is_accepted(engines, operator):
    # Slower than the heartbeat timeout is fine: hang detection counts from the next due beat.
    btc = engines["BTCUSDT"]
    assert change(as_user(operator), btc, cycle_interval="120").redirect_chain  # saved
    btc.refresh_from_db()
    assert btc.cycle_interval == 120


def test_changing_desired_state_in_the_form_is_a_command(engines, operator):
    response = change(as_user(operator), engines["BTCUSDT"], desired_state="stopped")
    assert response.status_code == 200
    assert commands() == [("BTCUSDT", "stop", "admin", "operator")]
    assert "Engine BTCUSDT: stop requested." in messages_of(response)


def test_without_control_desired_state_and_settings_are_read_only(engines, watcher):
    # A settings change makes the runner restart the engine (or, with crash injection,
    # fail it): without the control permission it must not get through.
    btc = engines["BTCUSDT"]
    response = change(
        as_user(watcher),
        btc,
        desired_state="stopped",
        cycle_interval="0.1",
        config='{"crash_probability": 1}',
    )
    assert response.status_code == 200
    btc.refresh_from_db()
    assert (btc.desired_state, btc.cycle_interval, btc.config) == ("running", None, {})
    assert not EngineCommand.objects.exists()


def test_the_change_page_shows_recent_restarts_errors_and_commands(engines, operator):
    btc = engines["BTCUSDT"]
    now = datetime.now(UTC)
    for attempt in range(1, 13):
        EngineRestart.objects.create(
            engine=btc, at=now, reason=f"crash {attempt}", attempt=attempt, backoff_seconds=60.0
        )
    EngineError.objects.create(engine=btc, at=now, type="InjectedCrash", message="kaboom")
    client = as_user(operator)
    action(client, "restart_engines", "BTCUSDT")
    page = client.get(f"{CHANGELIST}{btc.pk}/change/").content.decode()
    assert "crash 12" in page and "crash 3" in page and "crash 2<" not in page  # newest 10
    assert "kaboom" in page and "Recent commands" in page and "restart" in page
    for runner_field in ("status", "total_pnl", "last_heartbeat"):
        assert f'name="{runner_field}"' not in page  # read-only: shown, never posted


def test_deleting_goes_through_the_service(engines, operator, watcher):
    xrp = engines["XRPUSDT"]
    assert (
        as_user(watcher).post(f"{CHANGELIST}{xrp.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    response = as_user(operator).post(f"{CHANGELIST}{xrp.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Engine.objects.filter(symbol="XRPUSDT").exists()
    bulk = action(as_user(operator), "delete_selected", "ETHUSDT", "SOLUSDT")
    assert bulk.status_code == 200
    client = as_user(operator)
    ids = [engines["ETHUSDT"].pk, engines["SOLUSDT"].pk]
    client.post(CHANGELIST, {"action": "delete_selected", "_selected_action": ids, "post": "yes"})
    assert commands() == [
        ("XRPUSDT", "remove", "admin", "operator"),
        ("ETHUSDT", "remove", "admin", "operator"),
        ("SOLUSDT", "remove", "admin", "operator"),
    ]


@pytest.mark.parametrize("model", ["enginerestart", "engineerror", "enginecommand"])
def test_logs_are_read_only(engines, django_user_model, model):
    admin_user = django_user_model.objects.create_superuser("root")
    client = as_user(admin_user)
    assert client.get(f"/admin/engines_app/{model}/").status_code == 200
    assert client.get(f"/admin/engines_app/{model}/add/").status_code == 403


# API tokens ----------------------------------------------------------------------------


def test_a_token_is_shown_once_and_works_for_its_user(engines, operator, django_user_model):
    operator.user_permissions.add(*Permission.objects.filter(codename__contains="apitoken"))
    other = django_user_model.objects.create_superuser("root")
    client = as_user(operator)
    response = client.post("/admin/engines_app/apitoken/add/", {"name": "deploy", "user": other.pk})
    key = shown_key(response)
    token = ApiToken.objects.get()
    assert token.user == operator  # not the superuser: only a superuser mints for others
    assert key.startswith(token.key_prefix) and key not in token.key_hash
    api = Client().post("/engines/stop/BTCUSDT", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert api.status_code == 202
    assert commands() == [("BTCUSDT", "stop", "api", "operator")]
    listing = client.get("/admin/engines_app/apitoken/")
    assert key not in listing.content.decode()


def shown_key(response) -> str:
    """The key on the page that created a token."""
    assert response.status_code == 200
    found = re.search(r'value="(lvp_[A-Za-z0-9_-]{43})"', response.content.decode())
    assert found, "the key is not on the page"
    return found.group(1)


def test_a_new_key_is_in_no_cookie_message_or_log(engines, django_user_model, caplog):
    caplog.set_level(logging.DEBUG)
    root = django_user_model.objects.create_superuser("root")
    client = as_user(root)
    response = client.post("/admin/engines_app/apitoken/add/", {"name": "grafana", "user": root.pk})
    key = shown_key(response)
    assert "Copy the key now" in response.content.decode()
    assert "no-store" in response["Cache-Control"]  # not kept by a browser's cache either
    assert key not in response.cookies.output()  # no Set-Cookie carries it
    assert key not in client.cookies.output()
    assert all(key not in str(value) for value in client.session.values())
    assert all(key not in str(m) for m in get_messages(response.wsgi_request))
    after = client.get("/admin/engines_app/apitoken/")  # the next page: messages shown here
    assert key not in after.content.decode()
    assert key not in caplog.text


def test_an_engine_deleted_under_an_action_is_reported_not_a_500(engines, operator):
    from django.contrib import admin as django_admin
    from django.contrib.messages.storage.fallback import FallbackStorage
    from django.test import RequestFactory

    request = RequestFactory().post("/admin/engines_app/engine/")
    request.user, request.session = operator, {}
    request._messages = FallbackStorage(request)
    model_admin = django_admin.site._registry[Engine]
    selected = list(Engine.objects.filter(symbol__in=["BTCUSDT", "ETHUSDT"]))
    Engine.objects.filter(symbol="ETHUSDT").delete()  # another operator, meanwhile
    model_admin.stop_engines(request, selected)
    said = [str(m) for m in request._messages]
    assert any("Stop requested for 1 engine(s): BTCUSDT" in m for m in said)
    assert any("No longer there, nothing done: ETHUSDT" in m for m in said)
    assert Engine.objects.get(symbol="BTCUSDT").desired_state == "stopped"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"order_qty": NaN}', "order_qty must be a number greater than 0"),
        ('{"daily_loss_limit": NaN}', "daily_loss_limit must be a number greater than 0"),
        ('{"max_position_notional": Infinity}', "max_position_notional must be a number"),
        ('{"max_order_notional": -Infinity}', "max_order_notional must be a number"),
        ('{"feed_options": {"price": Infinity}}', "feed_options.price must be a number"),
        (
            '{"feed": "ws", "feed_options": {"url": "ws://127.0.0.1:9/", "reconnect_cap": '
            "Infinity}}",
            "feed_options.reconnect_cap must be a number greater than 0",
        ),
    ],
)
def test_nan_and_infinity_in_a_config_are_refused_in_the_add_form(operator, config, message):
    form = {"symbol": "ADAUSDT", "desired_state": "running", "cycle_interval": "", "config": config}
    response = as_user(operator).post(f"{CHANGELIST}add/", form)
    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors["config"])
    assert not Engine.objects.exists() and not EngineCommand.objects.exists()


def test_an_engine_in_step_shows_its_runners_beat(engines, watcher):
    btc = engines["BTCUSDT"]
    old = datetime.now(UTC) - timedelta(minutes=30)
    Engine.objects.filter(pk=btc.pk).update(last_heartbeat=old, beats_with_runner=True)
    hold([btc], "runner-a")
    heartbeat("runner-a", beats_since=datetime.now(UTC) - timedelta(seconds=3))
    listed = as_user(watcher).get(CHANGELIST).content.decode()
    page = as_user(watcher).get(f"{CHANGELIST}{btc.pk}/change/").content.decode()
    for shown in (listed, page):
        assert re.search(r">\s*[345] s\s*<", shown), "heartbeat age: the runner's, 3 s"
        assert "30 min" not in shown
