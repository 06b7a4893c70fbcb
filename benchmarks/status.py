"""GET /engines/status at N engines under concurrent clients, beside a bare Django JSON view
of the same payload, both served by one daphne process on a temp SQLite installation."""

from __future__ import annotations

import asyncio
import statistics
import time

from benchmarks import Row
from benchmarks.runner import data_dir
from engines_app.testing import Installation

CLIENTS = 8
WARM_UP = 10


def run(*, engines: int = 1000, samples: int = 400) -> list[Row]:
    """Time ``samples`` requests to each URL from ``CLIENTS`` concurrent clients."""
    import httpx  # noqa: F401  (fail early, before starting anything)

    with data_dir(engines) as path, Installation(path) as installation:
        token = _token(installation)
        installation.serve("benchmarks.bare_asgi:application")
        api, bare = asyncio.run(_measure(installation.url, token, samples))
    name = f"GET /engines/status, {engines} engines, {CLIENTS} clients"
    baseline = "bare Django JSON view of the same payload"
    return [
        _row(f"{name}: p50", api, bare, 50, baseline, None),
        _row(f"{name}: p99", api, bare, 99, baseline, "< 50"),
    ]


def _row(name: str, api: list[float], bare: list[float], pct: int, baseline: str, target):
    return {
        "name": name,
        "value": _pct(api, pct),
        "unit": "ms",
        "baseline": _pct(bare, pct),
        "baseline_name": baseline,
        "target": target,
    }


def _pct(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] * 1000


async def _measure(base: str, token: str, samples: int) -> tuple[list[float], list[float]]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        await _wait_ready(client)
        for url in ("/engines/status", "/bench/bare-status"):
            for _ in range(WARM_UP):
                (await client.get(url)).raise_for_status()
        api: list[float] = []
        bare: list[float] = []
        # Interleave rounds so both see the same machine load.
        for _ in range(max(1, samples // 50)):
            api += await _round(client, "/engines/status", 50)
            bare += await _round(client, "/bench/bare-status", 50)
    return api, bare


async def _round(client, url: str, count: int) -> list[float]:
    times: list[float] = []
    queue = list(range(count))

    async def one_client() -> None:
        while queue:
            queue.pop()
            began = time.perf_counter()
            response = await client.get(url)
            response.raise_for_status()
            times.append(time.perf_counter() - began)

    await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    return times


async def _wait_ready(client) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            await client.get("/bench/bare-status")
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise RuntimeError("daphne did not start within 60 s") from None
            await asyncio.sleep(0.1)


def _token(installation: Installation) -> str:
    code = (
        "from django.contrib.auth import get_user_model;"
        "from engines_app.api.tokens import api_token_create;"
        "u = get_user_model().objects.create_user('bench');"
        "print(api_token_create(user=u, name='bench')[1])"
    )
    done = installation.manage("shell", "-c", code)
    return done.stdout.strip().splitlines()[-1]
