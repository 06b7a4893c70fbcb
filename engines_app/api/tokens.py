"""API tokens: random keys, stored as SHA-256 hashes (a key has 256 bits of entropy, so a
slow password hash would add nothing but latency)."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from ..models import ApiToken

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
    if not KEY_RE.match(key):
        return None
    token = ApiToken.objects.select_related("user").filter(key_hash=_hash(key)).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > TOUCH_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user
