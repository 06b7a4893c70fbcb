"""The websocket's origin check: exactly the panel's own origin (scheme, host and port), or
one listed in ``CSRF_TRUSTED_ORIGINS``, the same rule Django's CSRF check applies to forms.

Channels' ``AllowedHostsOriginValidator`` compares the host only, so any other web app on the
same host (another port, or http against https) could drive an operator's session.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


def _is_secure(scope: dict[str, Any]) -> bool:
    """Like ``HttpRequest.is_secure``: wss, or the proxy header the settings name."""
    if scope.get("scheme") in ("wss", "https"):
        return True
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if not proxy_header:
        return False
    name, secure_value = proxy_header
    header = name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin1")
    value = _header(scope, header)
    return value is not None and value.split(",")[0].strip() == secure_value


def own_origin(scope: dict[str, Any]) -> str | None:
    """The origin a page served by this connection's host has, or None for a host that
    ``ALLOWED_HOSTS`` refuses."""
    host = (_header(scope, b"host") or "").lower()
    domain, _port = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:  # as Django's own host check
        allowed = ["localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed):
        return None
    return f"{'https' if _is_secure(scope) else 'http'}://{host}"


def trusted_origin(origin: str) -> bool:
    """Listed in ``CSRF_TRUSTED_ORIGINS``: exactly, or under a ``scheme://*.domain`` entry."""
    entries = [entry.lower() for entry in settings.CSRF_TRUSTED_ORIGINS]
    if origin in entries:
        return True
    parsed = urlsplit(origin)
    for entry in entries:
        pattern = urlsplit(entry)
        if "*" in pattern.netloc and pattern.scheme == parsed.scheme:
            if is_same_domain(parsed.netloc, pattern.netloc.replace("*", "", 1)):
                return True
    return False


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether a websocket handshake comes from a page this panel served (or trusts)."""
    origin = _header(scope, b"origin")
    if not origin or origin == "null":
        return False
    origin = origin.lower()
    return origin == own_origin(scope) or trusted_origin(origin)


class SameOriginValidator:
    """ASGI middleware: refuse a websocket whose ``Origin`` is not the panel's own."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
