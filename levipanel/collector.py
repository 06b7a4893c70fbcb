"""The web process's start-up, out of the cyclic garbage collector's sight."""

from __future__ import annotations

import gc

from django.urls import get_resolver


def freeze_loaded() -> None:
    """Load what the first request would (every view, the API and its schemas), collect
    the start-up's garbage, and freeze the rest (``gc.freeze``).

    What is loaded at start-up lives as long as the process, and each full collection
    walked all of it: 65-75 ms with the event loop stopped, every 3 s under steady
    requests (``docs/benchmarks.md``), the one-engine status read's worst p99 by far.
    What requests allocate later is collected as usual."""
    get_resolver().url_patterns  # noqa: B018 (imports the URLconf and every view)
    gc.collect()  # the start-up's garbage first: frozen, it would never go
    gc.freeze()
