"""A strategy's parameters are checked where operators set them: the admin form and the
API refuse a bad value with the reason, and change nothing."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from engines_app.models import Engine, EngineCommand
from tests.helpers import bearer, make_user

pytestmark = pytest.mark.django_db

USER = "tests.strategies.user_strategies"
GOOD = {"strategy": f"{USER}:Picky", "params": {"window": 20, "band": 2.0}}


@pytest.fixture
def listed(settings):
    settings.LEVIPANEL_STRATEGY_MODULES = [USER]


@pytest.fixture
def operator(django_user_model):
    user = make_user(django_user_model, "operator", control=True)
    user.is_staff = True
    user.save()
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=("view_engine", "change_engine"))
    )
    return user


@pytest.fixture
def engine(db):
    return Engine.objects.create(symbol="BTCUSDT", config={"strategy": "sma_cross"})


def admin_change(operator, engine: Engine, config: dict):
    client = Client()
    client.force_login(operator)
    form = {
        "desired_state": engine.desired_state,
        "cycle_interval": "",
        "config": json.dumps(config),
    }
    return client.post(f"/admin/engines_app/engine/{engine.pk}/change/", form, follow=True)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"window": 1000}, "params.window must be a whole number from 2 to 500"),
        ({"mode": "open"}, "params.mode must be one of: close, hl2"),
        ({"low": 9, "high": 3}, "params.low must be below params.high"),
        ({"speed": 3}, "unknown Picky parameter: speed"),
    ],
)
def test_the_admin_refuses_a_bad_parameter_with_the_reason(
    listed, operator, engine, params, reason
):
    response = admin_change(operator, engine, {"strategy": f"{USER}:Picky", "params": params})
    assert response.status_code == 200
    assert reason in response.content.decode()
    engine.refresh_from_db()
    assert engine.config == {"strategy": "sma_cross"}
    assert not EngineCommand.objects.exists()

    admin_change(operator, engine, GOOD)
    engine.refresh_from_db()
    assert engine.config == GOOD
    assert list(EngineCommand.objects.values_list("action", flat=True)) == ["configure"]


def test_the_admin_refuses_a_module_not_listed(operator, engine):
    response = admin_change(operator, engine, GOOD)  # the setting lists nothing here
    assert f"strategy module {USER} is not in LEVIPANEL_STRATEGY_MODULES" in (
        response.content.decode()
    )
    engine.refresh_from_db()
    assert engine.config == {"strategy": "sma_cross"}


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"band": 9}, "params.band must be a number from 0.1 to 5"),
        ({"short": 1}, "params.short must be true or false"),
    ],
)
def test_the_api_refuses_a_bad_parameter_with_the_reason(
    client, listed, operator, engine, params, reason
):
    token = bearer(operator)
    body = {"config": {"strategy": f"{USER}:Picky", "params": params}}
    response = client.post(
        "/engines/configure/BTCUSDT", body, content_type="application/json", **token
    )
    assert response.status_code == 400
    assert reason in response.json()["detail"]
    engine.refresh_from_db()
    assert engine.config == {"strategy": "sma_cross"}
    assert not EngineCommand.objects.exists()

    response = client.post(
        "/engines/configure/BTCUSDT", {"config": GOOD}, content_type="application/json", **token
    )
    assert response.status_code == 202
    assert response.json()["action"] == "configure"
    engine.refresh_from_db()
    assert engine.config == GOOD


def test_the_api_needs_the_control_permission_to_configure(
    client, listed, engine, django_user_model
):
    viewer = make_user(django_user_model, "viewer")
    response = client.post(
        "/engines/configure/BTCUSDT",
        {"config": GOOD},
        content_type="application/json",
        **bearer(viewer),
    )
    assert response.status_code == 403
    engine.refresh_from_db()
    assert engine.config == {"strategy": "sma_cross"}
