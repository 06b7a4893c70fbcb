"""Exchange API keys at rest: encrypted with Fernet (the ``cryptography`` library), keyed
from the environment, never from the database.

``LEVIPANEL_FERNET_KEYS`` holds one or more Fernet keys, comma-separated: the first
encrypts, every one decrypts (to rotate, put the new key first and re-save the accounts).
Make one with ``python manage.py fernetkey`` (docs/exchanges.md).
"""

from __future__ import annotations

import os

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEYS_ENV = "LEVIPANEL_FERNET_KEYS"


class VaultError(RuntimeError):
    """No key, a bad key, or a secret no key here decrypts. Never quotes a secret."""


def _fernet() -> MultiFernet:
    raw = os.environ.get(KEYS_ENV, "")
    keys = [key.strip() for key in raw.split(",") if key.strip()]
    if not keys:
        raise VaultError(f"{KEYS_ENV} is not set: exchange keys cannot be stored or read")
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except (ValueError, TypeError) as exc:
        raise VaultError(f"{KEYS_ENV} holds a key that is not a Fernet key") from exc


def encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise VaultError(f"a stored exchange key does not decrypt with {KEYS_ENV}") from None
