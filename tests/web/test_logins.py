"""Login throttling (django-axes) on /login/ and the admin's login: a username guessed from
one address is locked out with a clear page until the cool-off or an operator's reset; API
tokens are not throttled."""

from __future__ import annotations

import io

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client

from tests.helpers import bearer

pytestmark = pytest.mark.django_db

PASSWORD = "right-password-1"
LOGIN_PAGES = ["/login/", "/admin/login/"]


@pytest.fixture(autouse=True)
def fast_hashing(settings) -> None:
    """Dozens of logins: a cheap hasher keeps them quick (the throttle does not care)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def ops(django_user_model):
    return django_user_model.objects.create_user("ops", password=PASSWORD, is_staff=True)


def log_in(client: Client, page: str, password: str):
    return client.post(page, {"username": "ops", "password": password})


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def lock_out(client: Client, page: str) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert log_in(client, page, "wrong").status_code in (200, 429)


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_wrong_passwords_then_the_right_one_is_refused_with_the_lockout_page(ops, page):
    client = Client()
    lock_out(client, page)
    response = log_in(client, page, PASSWORD)
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert "axes_reset_username" in response.content.decode()
    assert not logged_in(client)


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_after_axes_reset_the_right_password_works(ops, page):
    client = Client()
    lock_out(client, page)
    call_command("axes_reset", stdout=io.StringIO())
    assert log_in(client, page, PASSWORD).status_code == 302
    assert logged_in(client)


def test_axes_reset_username_lifts_one_lock(ops):
    client = Client()
    lock_out(client, "/login/")
    call_command("axes_reset_username", "ops", stdout=io.StringIO())
    assert log_in(client, "/login/", PASSWORD).status_code == 302


def test_a_good_login_before_the_limit_starts_the_count_again(ops):
    client = Client()
    for _ in range(3):
        for _ in range(settings.AXES_FAILURE_LIMIT - 1):
            log_in(client, "/login/", "wrong")
        assert log_in(client, "/login/", PASSWORD).status_code == 302
        client.logout()


def test_an_api_token_still_works_for_a_locked_out_user(ops):
    lock_out(Client(), "/login/")
    response = Client().get("/engines/status", **bearer(ops))
    assert response.status_code == 200


def test_logins_are_throttled_by_the_client_behind_a_trusted_proxy_not_a_forged_header(
    settings, rf
):
    from axes.helpers import get_client_ip_address

    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    behind = rf.get("/login/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert get_client_ip_address(behind) == "203.0.113.7"
    forged = rf.get("/login/", REMOTE_ADDR="198.51.100.2", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert get_client_ip_address(forged) == "198.51.100.2"  # not a trusted proxy: its own
