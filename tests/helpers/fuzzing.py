"""Example counts and settings shared by the fuzz tests."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def fuzz_examples(default: int) -> int:
    """Examples per fuzz test: ``default`` (small, for CI), or ``LEVIPANEL_FUZZ_EXAMPLES``."""
    return int(os.environ.get("LEVIPANEL_FUZZ_EXAMPLES") or default)


def fuzz_settings(default: int) -> settings:
    """Hypothesis settings for a fuzz test: the same examples on every run (derandomized, no
    example database), no deadline (the machine is shared), fixtures reused across examples."""
    return settings(
        max_examples=fuzz_examples(default),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
