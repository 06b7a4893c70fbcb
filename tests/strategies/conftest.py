from __future__ import annotations

import pytest

from engines_app.runtime import strategies

USER = "tests.strategies.user_strategies"


@pytest.fixture
def allowed():
    """The user strategy module listed (as the setting lists it), for runtime-only tests."""
    before = strategies.allowed_modules()
    strategies.set_allowed_modules([USER, "examples.strategies"])
    yield USER
    strategies.set_allowed_modules(before)
