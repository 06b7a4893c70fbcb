"""System checks: the engine settings (levipanel.E001), the alert, metrics and retention
settings (levipanel.E002), the production profile (levipanel.E003), the metrics token
(levipanel.E004), private files (levipanel.W005) and the strategy modules
(levipanel.E006). An error stops ``runengines`` and ``migrate`` with its message."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from django.conf import settings
from django.core.checks import Error, Warning, register

from . import conf
from .runtime.strategies import module_problem


@register()
def engine_settings_check(app_configs, **kwargs):
    return [
        Error(problem, hint="Fix the environment variable and start again.", id="levipanel.E001")
        for problem in conf.problems()
    ]


def ops_problems() -> list[str]:
    found = [
        f"{name}: {' '.join(messages)}"
        for name, messages in getattr(settings, "OPS_ENV_ERRORS", {}).items()
    ]
    for name, setting in (
        ("METRICS_ALLOWED_IPS", "METRICS_ALLOWED_IPS"),
        ("LEVIPANEL_TRUSTED_PROXIES", "TRUSTED_PROXIES"),
    ):
        for entry in getattr(settings, setting, None) or []:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                found.append(f"{name}: {entry!r} is not an IP address or network")
    alerts = getattr(settings, "ALERTS", {})
    if bool(alerts.get("TELEGRAM_BOT_TOKEN")) != bool(alerts.get("TELEGRAM_CHAT_ID")):
        found.append("TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID: set both, or neither")
    return found


@register()
def ops_settings_check(app_configs, **kwargs):
    return [
        Error(problem, hint="Fix the environment variable and start again.", id="levipanel.E002")
        for problem in ops_problems()
    ]


def deploy_problems() -> list[str]:
    """What the production profile (``DJANGO_SECURE=1``) is missing."""
    found = [
        f"{name}: {' '.join(messages)}"
        for name, messages in getattr(settings, "DEPLOY_ENV_ERRORS", {}).items()
    ]
    if not getattr(settings, "SECURE_PROFILE", False):
        return found
    if not settings.ALLOWED_HOSTS:
        found.append(
            "DJANGO_ALLOWED_HOSTS: required with DJANGO_SECURE=1: the panel's host names, "
            "e.g. panel.example.com"
        )
    key = settings.SECRET_KEY
    if not getattr(settings, "SECRET_KEY_FROM_ENV", False):
        found.append("DJANGO_SECRET_KEY: required with DJANGO_SECURE=1")
    elif len(key) < 50 or len(set(key)) < 5 or key.startswith("django-insecure-"):
        found.append("DJANGO_SECRET_KEY: too weak: use 50 or more random characters")
    if settings.DEBUG:
        found.append("DJANGO_DEBUG: must be 0 with DJANGO_SECURE=1")
    return found


@register()
def deploy_settings_check(app_configs, **kwargs):
    hint = "Set the environment variable (see docs/security.md) and start again."
    return [Error(problem, hint=hint, id="levipanel.E003") for problem in deploy_problems()]


@register()
def metrics_token_check(app_configs, **kwargs):
    if not getattr(settings, "METRICS_TOKEN_REQUIRED", False) or settings.METRICS_TOKEN:
        return []
    return [
        Error(
            "METRICS_TOKEN: required when DJANGO_ALLOWED_HOSTS names a host other than this "
            "machine's own: /metrics would otherwise be open to anyone a proxy on this host "
            "forwards.",
            hint='Set METRICS_TOKEN to a long random value, e.g. python -c "import secrets; '
            'print(secrets.token_urlsafe(32))", and give it to Prometheus as a bearer token.',
            id="levipanel.E004",
        )
    ]


@register()
def private_files_check(app_configs, **kwargs):
    loose = [
        f"{path} is readable by other users (mode {mode:o})"
        for path, mode in private_file_modes()
        if mode & 0o077
    ]
    hint = "Make it its owner's only: chmod 700 the data directory, chmod 600 the files."
    return [Warning(problem, hint=hint, id="levipanel.W005") for problem in loose]


def private_file_modes() -> list[tuple[Path, int]]:
    """The modes of the data directory, the SQLite file and the secret files."""
    paths = [settings.DATA_DIR, settings.DATA_DIR / ".secret_key"]
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        paths.append(Path(database["NAME"]))
    found = []
    for path in paths:
        try:
            found.append((path, path.stat().st_mode & 0o777))
        except (OSError, TypeError):
            continue
    return found


def strategy_module_problems() -> list[str]:
    """Every LEVIPANEL_STRATEGY_MODULES entry that cannot be imported."""
    return [
        f"LEVIPANEL_STRATEGY_MODULES: {problem}"
        for entry in getattr(settings, "LEVIPANEL_STRATEGY_MODULES", [])
        if (problem := module_problem(entry))
    ]


@register()
def strategy_modules_check(app_configs, **kwargs):
    hint = "List importable modules, comma-separated (see docs/strategies.md), and start again."
    return [
        Error(problem, hint=hint, id="levipanel.E006") for problem in strategy_module_problems()
    ]
