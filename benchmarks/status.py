"""GET /engines/status (whole, revalidated, one filtered page) and GET /engines/status/{symbol}
at N engines under concurrent clients, each beside a bare Django JSON view of the same
payload, all served by one daphne process on a temp SQLite installation.

Beside them, the bare one-engine view served by a second daphne process through Django's
own ASGI handler (a thread made for each request, the middleware hook by hook in async
mode): what the panel's handler (``levipanel/handler.py``) saves, in the same run.

The clients are aiohttp's, on one event loop: its HTTP parser is compiled, and the clients
take about a fifth of a core. httpx's took over nine tenths at this rate, and requests
waited in its connection pool for up to 300 ms before they were sent."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import psutil

from benchmarks import Row
from benchmarks.runner import data_dir
from benchmarks.worker import symbols
from engines_app.testing import Installation

CLIENTS = 8
WARM_UP = 10
ROUND = 50  # requests a round; the figures' rounds are interleaved with their baselines'
BARE = "/bench/bare-status"
DJANGO_HANDLER = "benchmarks.bare_asgi:django_handler"
PAGE = "?status=stopped&symbol=B00&page=2&page_size=50"


@dataclass(frozen=True)
class Figure:
    """One URL timed beside a bare view of the same payload, served by the same process."""

    label: str
    url: str
    bare: str
    target: str | None
    revalidate: bool = False  # send the last ETag back as If-None-Match
    clients: int = CLIENTS


@dataclass(frozen=True)
class Target:
    """A URL of another server, timed in the same rounds, with that server's process."""

    url: str
    server: psutil.Process


def figures(engines: int) -> list[Figure]:
    one = symbols(engines)[engines // 2]
    return [
        Figure("/engines/status, no ETag", "/engines/status", BARE, "< 50"),
        Figure("/engines/status, If-None-Match: 304", "/engines/status", BARE, "< 50", True),
        Figure(f"/engines/status{PAGE}", f"/engines/status{PAGE}", BARE, "< 50"),
        Figure(f"/engines/status/{one}", f"/engines/status/{one}", f"{BARE}/{one}", None),
        Figure(
            f"/engines/status/{one}", f"/engines/status/{one}", f"{BARE}/{one}", "< 10", clients=1
        ),
    ]


def run(*, engines: int = 1000, samples: int = 400) -> list[Row]:
    """Time ``samples`` requests to each figure's URL and to its bare view."""
    import aiohttp  # noqa: F401  (fail early, before starting anything)

    bare_one = (f"{BARE}/{symbols(engines)[engines // 2]}", 1)
    with (
        data_dir(engines) as path,
        Installation(path) as installation,
        Installation(path) as django_handler,
    ):
        token = _token(installation)
        server = psutil.Process(installation.serve("benchmarks.bare_asgi:application").pid)
        other = psutil.Process(django_handler.serve(DJANGO_HANDLER, log_name="django").pid)
        before = Target(f"{django_handler.url}{bare_one[0]}", other)
        times, cpu = asyncio.run(
            _measure(installation.url, token, samples, figures(engines), server, before)
        )
    rows = []
    for figure in figures(engines):
        bare = (figure.bare, figure.clients)
        clients = f"{figure.clients} client{'s' if figure.clients > 1 else ''}"
        name = f"GET {figure.label}, {engines} engines, {clients}"
        rows.append(_row(f"{name}: p50", times[figure], times[bare], 50, figure))
        rows.append(_row(f"{name}: p99", times[figure], times[bare], 99, figure))
    # What the machine's load does not change much: the server's CPU time per request.
    for figure in figures(engines)[:4]:
        row = _row(f"server CPU per request, GET {figure.label}", [], [], 0, figure)
        bare = (figure.bare, figure.clients)
        rows.append(row | {"value": _mean(cpu[figure]), "baseline": _mean(cpu[bare])})
    name = "bare one-engine view, the panel's ASGI handler"
    chain = [
        (f"{name}, 1 client: p50", _pct(times[bare_one], 50), _pct(times[before], 50)),
        (f"{name}, 1 client: p99", _pct(times[bare_one], 99), _pct(times[before], 99)),
        (f"server CPU per request, {name}", _mean(cpu[bare_one]), _mean(cpu[before])),
    ]
    django_handler = "the same view, Django's ASGI handler: middleware hook by hook"
    for label, value, baseline in chain:
        rows.append(
            {"name": label, "value": value, "unit": "ms", "baseline": baseline}
            | {"baseline_name": django_handler, "target": None}
        )
    return rows


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) * 1000


def _row(name: str, api: list[float], bare: list[float], pct: int, figure: Figure) -> Row:
    payload = "one engine's status" if figure.bare != BARE else "the fleet's status"
    return {
        "name": name,
        "value": _pct(api, pct) if api else None,
        "unit": "ms",
        "baseline": _pct(bare, pct) if bare else None,
        "baseline_name": f"bare Django JSON view of {payload}",
        "target": figure.target if pct == 99 else None,
    }


def _pct(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] * 1000


async def _measure(
    base: str,
    token: str,
    samples: int,
    figures: list[Figure],
    server: psutil.Process,
    other: Target,
) -> tuple[dict, dict]:
    """Request times, and the server's CPU time per request of each round, by figure, by
    (bare URL, clients) and for ``other`` (1 client)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    bares = sorted({(figure.bare, figure.clients) for figure in figures})
    times: dict = {key: [] for key in [*figures, *bares, other]}
    cpu: dict = {key: [] for key in times}
    connector = aiohttp.TCPConnector(limit=0)  # a kept connection for each client
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        headers=headers, connector=connector, timeout=timeout
    ) as client:
        await _wait_ready(client, f"{base}{BARE}")
        urls = {figure.url for figure in figures} | {url for url, _ in bares}
        for url in [f"{base}{url}" for url in urls] + [other.url]:
            for _ in range(WARM_UP):
                await _get(client, url)
        for _ in range(max(1, samples // ROUND)):
            rounds = [(f, f"{base}{f.url}", f.clients, f.revalidate, server) for f in figures]
            rounds += [((url, n), f"{base}{url}", n, False, server) for url, n in bares]
            rounds.append((other, other.url, 1, False, other.server))
            for key, url, clients, revalidate, process in rounds:
                began = _cpu(process)
                times[key] += await _round(client, url, clients, revalidate)
                cpu[key].append((_cpu(process) - began) / ROUND)
    return times, cpu


def _cpu(process: psutil.Process) -> float:
    used = process.cpu_times()
    return used.user + used.system


async def _get(client, url: str, headers: dict | None = None) -> tuple[int, str | None]:
    """GET ``url`` with its body read: the status and the ETag. Anything but a 200 or a
    304 fails the benchmark."""
    async with client.get(url, headers=headers) as response:
        await response.read()
        if response.status != 304:
            response.raise_for_status()
        return response.status, response.headers.get("ETag")


async def _round(client, url: str, clients: int, revalidate: bool) -> list[float]:
    times: list[float] = []
    queue = list(range(ROUND))

    async def one_client() -> None:
        etag = None
        while queue:
            queue.pop()
            headers = {"If-None-Match": etag} if revalidate and etag else None
            began = time.perf_counter()
            status, tag = await _get(client, url, headers)
            times.append(time.perf_counter() - began)
            if status != 304:
                etag = tag

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return times


async def _wait_ready(client, url: str) -> None:
    import aiohttp

    deadline = time.monotonic() + 60
    while True:
        try:
            await _get(client, url)
            return
        except aiohttp.ClientConnectionError:
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
