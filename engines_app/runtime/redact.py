"""Credentials out of URLs before they reach a log, an error row or a page.

A feed URL may carry a password (``wss://user:pass@host/``) or a token in its query
(``?token=…``, ``?api_key=…``). The stored configuration keeps the real URL; everything
shown or written elsewhere goes through ``redact_url`` (or ``redact_text`` for a message
that may quote one).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

MASK = "***"
# Query parameter names that carry a credential, compared without case, "-" or "_".
SECRET_PARAMETERS = frozenset(
    {
        "token",
        "accesstoken",
        "authtoken",
        "key",
        "apikey",
        "secret",
        "apisecret",
        "clientsecret",
        "signature",
        "sig",
        "password",
        "passwd",
        "pass",
        "passphrase",
        "auth",
        "authorization",
        "listenkey",
    }
)
URL_PATTERN = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
QUERY_PAIR = re.compile(r"(^|[?&;])([^=&;#?]+)=([^&;#]*)")


def _secret_name(name: str) -> bool:
    return name.lower().replace("-", "").replace("_", "") in SECRET_PARAMETERS


def redact_url(url: str) -> str:
    """``url`` with its user-info and the values of credential parameters masked; the rest
    is left as written."""
    try:
        parts = urlsplit(url)
    except ValueError:  # a bracket too many: mask by pattern alone
        return _mask_query(re.sub(r"(://)[^/?#]*@", rf"\g<1>{MASK}@", url))
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, _mask_query(parts.query), parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (an exception's message, a log line)."""
    return URL_PATTERN.sub(lambda match: redact_url(match.group(0)), text)


def _mask_query(query: str) -> str:
    return QUERY_PAIR.sub(
        lambda m: f"{m[1]}{m[2]}={MASK if _secret_name(unquote_plus(m[2])) else m[3]}", query
    )
