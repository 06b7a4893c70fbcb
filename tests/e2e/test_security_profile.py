"""DJANGO_SECURE=1: a TLS deployment from the environment alone, checked as an operator checks."""

from __future__ import annotations

import secrets

import httpx
import pytest

from engines_app.testing import Installation

HOST = "panel.example.com"


def profile(**extra: str) -> dict[str, str]:
    """The production profile as docs/security.md sets it, with ``extra`` on top (None
    leaves a variable out)."""
    env = {
        "DJANGO_SECURE": "1",
        "DJANGO_ALLOWED_HOSTS": HOST,
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_CSRF_TRUSTED_ORIGINS": f"https://{HOST}",
        "DJANGO_SECURE_PROXY_SSL_HEADER": "1",
        "LEVIPANEL_TRUSTED_PROXIES": "127.0.0.1",
        "METRICS_TOKEN": secrets.token_urlsafe(32),
        "DJANGO_DEBUG": "0",
    }
    return {**env, **extra}


def installation(tmp_path, env: dict[str, str | None]) -> Installation:
    made = Installation(tmp_path / "data", {k: v for k, v in env.items() if v is not None})
    for name in [name for name, value in env.items() if value is None]:
        made.env.pop(name, None)
    return made


def check(tmp_path, env: dict[str, str | None], *args: str):
    with installation(tmp_path, env) as panel:
        return panel.manage("check", *args, check=False)


def test_check_deploy_under_the_profile_finds_nothing(tmp_path):
    done = check(tmp_path, profile(), "--deploy")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "System check identified no issues (0 silenced)."
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("DJANGO_ALLOWED_HOSTS", "DJANGO_ALLOWED_HOSTS: required with DJANGO_SECURE=1"),
        ("DJANGO_SECRET_KEY", "DJANGO_SECRET_KEY: required with DJANGO_SECURE=1"),
    ],
)
def test_the_profile_without_a_required_variable_is_a_clear_error(tmp_path, missing, message):
    done = check(tmp_path, profile(**{missing: None}))
    assert done.returncode == 1
    assert f"(levipanel.E003) {message}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DJANGO_DEBUG", "1", "DJANGO_DEBUG: must be 0 with DJANGO_SECURE=1"),
        ("DJANGO_SECRET_KEY", "short", "DJANGO_SECRET_KEY: too weak"),
        ("DJANGO_SECURE_HSTS_SECONDS", "a year", "DJANGO_SECURE_HSTS_SECONDS: Not a valid integer"),
        ("DJANGO_SECURE", "maybe", "DJANGO_SECURE: Not a valid boolean"),
    ],
)
def test_a_bad_value_in_the_profile_is_a_clear_error(tmp_path, variable, value, message):
    done = check(tmp_path, profile(**{variable: value}))
    assert done.returncode == 1
    assert f"(levipanel.E003) {message}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_panel_served_to_other_hosts_needs_a_metrics_token(tmp_path):
    public = check(tmp_path, {"DJANGO_ALLOWED_HOSTS": f"{HOST},127.0.0.1", "METRICS_TOKEN": ""})
    assert public.returncode == 1
    assert "(levipanel.E004) METRICS_TOKEN: required" in public.stderr
    assert "HINT: Set METRICS_TOKEN" in public.stderr
    local = check(tmp_path, {"DJANGO_ALLOWED_HOSTS": "localhost,127.0.0.1,[::1]"})
    assert local.returncode == 0, local.stderr


def test_the_profile_redirects_to_https_and_marks_cookies_secure_behind_a_tls_proxy(tmp_path):
    with installation(tmp_path, profile()) as panel:
        panel.migrate()
        panel.serve()
        with httpx.Client(base_url=panel.url, headers={"Host": HOST}) as client:
            plain = client.get("/login/")
            proxied = client.get("/login/", headers={"X-Forwarded-Proto": "https"})

    assert plain.status_code == 301
    assert plain.headers["Location"] == f"https://{HOST}/login/"
    assert proxied.status_code == 200
    assert proxied.headers["Strict-Transport-Security"] == (
        "max-age=31536000; includeSubDomains; preload"
    )
    assert "secure" in proxied.headers["Set-Cookie"].lower()


def test_without_the_proxy_variable_a_forwarded_proto_is_not_believed(tmp_path):
    with installation(tmp_path, profile(DJANGO_SECURE_PROXY_SSL_HEADER=None)) as panel:
        panel.migrate()
        panel.serve()
        with httpx.Client(base_url=panel.url, headers={"Host": HOST}) as client:
            forged = client.get("/login/", headers={"X-Forwarded-Proto": "https"})

    assert forged.status_code == 301  # still plain HTTP: redirected, not served
