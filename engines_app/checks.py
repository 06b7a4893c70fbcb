"""System checks: the engine settings (levipanel.E001) and the alert, metrics and retention
settings (levipanel.E002). A bad value stops ``runengines`` and ``migrate`` with its message."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.core.checks import Error, register

from . import conf


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
    for entry in getattr(settings, "METRICS_ALLOWED_IPS", None) or []:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            found.append(f"METRICS_ALLOWED_IPS: {entry!r} is not an IP address or network")
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
