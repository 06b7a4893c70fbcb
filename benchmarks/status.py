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


# The figures, each timed against a bare view served by the same process in the same rounds:
# (row name, URL, send the ETag back?, bare URL, target in ms).
PAGE = "?status=stopped&symbol=B00&page=2&page_size=50"
ONE = "B00500USDT"
FIGURES = [
    ("list, no parameters, no ETag: p99", "/engines/status", False, "", "< 50"),
    ("list, If-None-Match (304): p99", "/engines/status", True, "", "< 50"),
    (f"filtered page {PAGE}: p99", f"/engines/status{PAGE}", False, "", "< 50"),
    (f"one engine /engines/status/{ONE}: p99", f"/engines/status/{ONE}", False, ONE, "< 10"),
]
BARE = "/bench/bare-status"


def run(*, engines: int = 1000, samples: int = 400) -> list[Row]:
    """Time ``samples`` requests to each URL from ``CLIENTS`` concurrent clients."""
    import httpx  # noqa: F401  (fail early, before starting anything)

    with data_dir(engines) as path, Installation(path) as installation:
        token = _token(installation)
        installation.serve("benchmarks.bare_asgi:application")
        times = asyncio.run(_measure(installation.url, token, samples))
    name = f"GET /engines/status, {engines} engines, {CLIENTS} clients"
    rows = [_row(f"{name}, list, no parameters: p50", times[0], times[BARE], 50, "", None)]
    for index, (label, _, _, bare, target) in enumerate(FIGURES):
        rows.append(_row(f"{name}, {label}", times[index], times[_bare(bare)], 99, bare, target))
    return rows


def _bare(symbol: str) -> str:
    return f"{BARE}/{symbol}" if symbol else BARE


def _row(name: str, api: list[float], bare: list[float], pct: int, symbol: str, target):
    payload = f"{symbol}'s status" if symbol else "the fleet's status"
    return {
        "name": name,
        "value": _pct(api, pct),
        "unit": "ms",
        "baseline": _pct(bare, pct),
        "baseline_name": f"bare Django JSON view of {payload}",
        "target": target,
    }


def _pct(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] * 1000


async def _measure(base: str, token: str, samples: int) -> dict:
    """Request times by figure (its index) and by bare URL."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    bare_urls = sorted({_bare(figure[3]) for figure in FIGURES})
    times: dict = {index: [] for index in range(len(FIGURES))} | {url: [] for url in bare_urls}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        await _wait_ready(client)
        for url in [figure[1] for figure in FIGURES] + bare_urls:
            for _ in range(WARM_UP):
                (await client.get(url)).raise_for_status()
        # Interleave rounds so every figure and its baseline see the same machine load.
        for _ in range(max(1, samples // 50)):
            for index, (_, url, revalidate, *_) in enumerate(FIGURES):
                times[index] += await _round(client, url, 50, revalidate)
            for url in bare_urls:
                times[url] += await _round(client, url, 50, False)
    return times


async def _round(client, url: str, count: int, revalidate: bool) -> list[float]:
    times: list[float] = []
    queue = list(range(count))

    async def one_client() -> None:
        etag = None
        while queue:
            queue.pop()
            headers = {"If-None-Match": etag} if revalidate and etag else {}
            began = time.perf_counter()
            response = await client.get(url, headers=headers)
            times.append(time.perf_counter() - began)
            if response.status_code != 304:
                response.raise_for_status()
                etag = response.headers.get("ETag")

    await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    return times


async def _wait_ready(client) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            await client.get(BARE)
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
