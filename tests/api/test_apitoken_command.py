"""``manage.py apitoken``: create prints the key once, list never shows it, revoke stops it."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from engines_app.models import ApiToken

pytestmark = pytest.mark.django_db


def apitoken(*args: str) -> str:
    out = io.StringIO()
    call_command("apitoken", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def status_with(key: str) -> int:
    return Client().get("/engines/status", HTTP_AUTHORIZATION=f"Bearer {key}").status_code


def test_create_prints_a_key_that_works_and_list_never_shows_it(django_user_model):
    django_user_model.objects.create_user("ops")
    key = apitoken("create", "ops", "grafana").strip()
    assert status_with(key) == 200
    listing = apitoken("list")
    assert "grafana" in listing and "ops" in listing and "never" not in listing
    assert key not in listing and key[4:] not in listing


def test_revoke_by_name_or_id_stops_the_key(django_user_model):
    django_user_model.objects.create_user("ops")
    first, second = (apitoken("create", "ops", name).strip() for name in ("a", "b"))
    assert "Revoked API token a" in apitoken("revoke", "a")
    assert "Revoked API token b" in apitoken("revoke", str(ApiToken.objects.get(name="b").pk))
    assert status_with(first) == 401 and status_with(second) == 401
    assert not ApiToken.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create", "nobody", "x"), "no user 'nobody'"),
        (("revoke", "missing"), "no API token with the name or id 'missing'"),
        (("revoke", "twice"), "several API tokens are named 'twice': give the id"),
    ],
)
def test_unknown_user_or_token_is_a_clear_error_and_changes_nothing(
    django_user_model, args, message
):
    ops = django_user_model.objects.create_user("ops")
    apitoken("create", "ops", "twice")
    apitoken("create", "ops", "twice")
    with pytest.raises(CommandError, match=message):
        apitoken(*args)
    assert ApiToken.objects.filter(user=ops).count() == 2


def test_an_inactive_user_gets_no_token(django_user_model):
    django_user_model.objects.create_user("gone", is_active=False)
    with pytest.raises(CommandError, match="not active"):
        apitoken("create", "gone", "x")
    assert not ApiToken.objects.exists()
