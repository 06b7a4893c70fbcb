"""The real services some tests need: where they are, and what to do when one is absent."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_URL = os.environ.get(
    "LEVIPANEL_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("LEVIPANEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CHROMIUM = Path(os.environ.get("LEVIPANEL_CHROMIUM", "/usr/bin/chromium"))


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    """Skip when a service is absent on a laptop; fail in CI, where it must be there."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the service is required)")
    pytest.skip(f"{message}: start it to run this test")
