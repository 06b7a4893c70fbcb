"""API tokens: random keys, stored as SHA-256 hashes (a key has 256 bits of entropy, so a
slow password hash would add nothing but latency)."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models import QuerySet
from django.utils import timezone

from ..models import ApiToken
from ..selectors.prepared import Prepared

PREFIX = "lvp_"
KEY_RE = re.compile(r"^lvp_[A-Za-z0-9_-]{43}$")
# Writing last_used_at on every request would make each API call a write transaction.
TOUCH_EVERY = timedelta(minutes=1)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@transaction.atomic
def api_token_create(*, user, name: str) -> tuple[ApiToken, str]:
    """Create a token for ``user``; return it with its key, which is never stored."""
    key = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name, key_hash=_hash(key), key_prefix=key[: len(PREFIX) + 6]
    )
    return token, key


def api_token_user(key: str):
    """The active user a key belongs to, or None for a malformed, unknown or revoked key."""
    token = api_token_found(key)
    if token is None:
        return None
    api_token_touch(token)
    return token.user


# The token's fields a request needs, in the model's order, as ``from_db`` takes them.
_TOKEN_FIELDS = [
    field.attname
    for field in ApiToken._meta.concrete_fields
    if field.attname in {"id", "user_id", "last_used_at"}
]


def _user_fields() -> list[str]:
    return [field.attname for field in get_user_model()._meta.concrete_fields]


# The token and its user in one read (the API's every request): see ``Prepared``.
_TOKEN = Prepared(
    lambda key_hash: (
        ApiToken.objects.filter(key_hash=key_hash)
        .order_by()
        .values(*_TOKEN_FIELDS, *(f"user__{name}" for name in _user_fields()))[:1]
    )
)


def api_token_found(key: str) -> ApiToken | None:
    """The key's token, its user loaded, if the key is well formed, known and its user
    active: reads only."""
    if not KEY_RE.match(key):
        return None
    rows = _TOKEN.rows(_hash(key))
    if not rows:
        return None
    row, names = rows[0], _user_fields()
    user = get_user_model().from_db(
        DEFAULT_DB_ALIAS, names, [row[f"user__{name}"] for name in names]
    )
    if not user.is_active:
        return None
    token = ApiToken.from_db(DEFAULT_DB_ALIAS, _TOKEN_FIELDS, [row[n] for n in _TOKEN_FIELDS])
    token.user = user
    return token


def api_token_touch(token: ApiToken) -> None:
    """Note that the token was used now, if its last note is over ``TOUCH_EVERY`` old."""
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > TOUCH_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)


class TokenNotFound(Exception):
    """No token, or more than one, answers to the name or id given."""


def api_token_list() -> QuerySet[ApiToken]:
    """Every token with its user, newest first."""
    return ApiToken.objects.select_related("user").order_by("-created_at", "-pk")


def api_token_get(*, name_or_id: str) -> ApiToken:
    """The one token with this id or name; a name shared by several tokens needs the id."""
    tokens = api_token_list()
    if name_or_id.isdigit() and (token := tokens.filter(pk=int(name_or_id)).first()):
        return token
    named = list(tokens.filter(name=name_or_id)[:2])
    if not named:
        raise TokenNotFound(f"no API token with the name or id {name_or_id!r}")
    if len(named) > 1:
        raise TokenNotFound(f"several API tokens are named {name_or_id!r}: give the id")
    return named[0]


@transaction.atomic
def api_token_revoke(*, name_or_id: str) -> ApiToken:
    """Delete the token: its key stops working at once. Return what was deleted."""
    token = api_token_get(name_or_id=name_or_id)
    token.delete()
    return token
