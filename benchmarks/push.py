"""Push latency: a change written by the runner process → a websocket client of the web process.

Starts the web server (daphne) and the runner (``runengines``) as subprocesses on a temp
data dir, logs in over HTTP, opens the dashboard websocket and times every pushed row from
its ``updated_at`` stamp (taken by the runner just before its write) to its arrival. The
runner's heartbeat flush writes one row every ``FLUSH_INTERVAL`` — slower than the
broadcaster's look, so each write is timed on its own. Measured twice: on the embedded
default (SQLite, in-memory layer: the broadcaster's poll is the bus) and with ``REDIS_URL``
(the runner's hint wakes the broadcaster through channels_redis).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

from websockets.sync.client import ClientConnection

from engines_app.testing import Installation

FLUSH_INTERVAL = 0.3
PUSH_INTERVAL = 0.2
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


TARGET_EMBEDDED_P95 = "< 1000"  # ms
TARGET_REDIS_P95 = "< 150"  # ms


def run(*, engines: int = 10_000, samples: int = 30) -> list[dict]:
    """Rows ``{name, value, unit, baseline, baseline_name, target}`` for the benchmark: the
    bytes per flush at 1,000 and ``engines``; push latency from a real runner of one engine
    and from the runner's writes of ``engines`` engines, embedded and with Redis."""
    out = [*bytes_rows(1000), *(bytes_rows(engines) if engines != 1000 else [])]
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    redis = reachable(redis_url)
    trips = asyncio.run(layer_round_trip(redis_url, samples=max(samples, 30))) if redis else None
    for count, measure_ in ((1, measure), (engines, measure_fleet)):
        embedded = measure_(count, samples=samples)
        if not redis:
            skipped = f"Redis is not reachable at {_host_port(redis_url)}"
            out += rows(count, embedded, skipped=skipped)
            continue
        out += rows(count, embedded, measure_(count, samples=samples, redis_url=redis_url), trips)
    return out


def rows(
    engines: int,
    embedded: Latencies,
    redis: Latencies | None = None,
    round_trip: list[float] | None = None,
    *,
    skipped: str = "",
) -> list[dict]:
    """The figures beside their baselines; the p95 rows carry the design's targets."""
    floor = PUSH_INTERVAL * 1000
    floor_name = "broadcaster poll interval (the embedded floor)"
    fleet = "1 engine (a real runner)" if engines == 1 else f"{engines} engines"
    name = f"push latency {{}}, {fleet}, {{}}"
    out = [
        _row(name.format("p50", "embedded"), embedded.p50, floor, floor_name, None),
        _row(name.format("p95", "embedded"), embedded.p95, floor, floor_name, TARGET_EMBEDDED_P95),
    ]
    if redis is None or round_trip is None:
        row = _row(name.format("p95", "Redis"), None, None, "", TARGET_REDIS_P95)
        return [*out, {**row, "note": f"skipped: {skipped}"}]
    base, base_name = percentile(round_trip, 50), "bare channels_redis group_send → receive"
    base95 = percentile(round_trip, 95)
    return [
        *out,
        _row(name.format("p50", "Redis"), redis.p50, base, base_name, None),
        _row(name.format("p95", "Redis"), redis.p95, base95, base_name, TARGET_REDIS_P95),
    ]


def _row(
    name: str, value: float | None, baseline: float | None, baseline_name: str, target: str | None
) -> dict:
    return {
        "name": name,
        "value": None if value is None else round(value, 1),
        "unit": "ms",
        "baseline": None if baseline is None else round(baseline, 1),
        "baseline_name": baseline_name,
        "target": target,
    }


@dataclass
class Latencies:
    values: list[float] = field(default_factory=list)  # milliseconds

    @property
    def p50(self) -> float:
        return percentile(self.values, 50)

    @property
    def p95(self) -> float:
        return percentile(self.values, 95)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def measure(engines: int, *, samples: int, redis_url: str | None = None) -> Latencies:
    """Start web + runner with ``engines`` (1 to 3) engines, open a dashboard and time
    ``samples`` pushes."""
    with tempfile.TemporaryDirectory(prefix="levipanel-push-") as tmp:
        with panel(Path(tmp), redis_url=redis_url, symbols=engines) as installation:
            with installation.dashboard() as socket_:
                return collect(socket_, samples=samples)


# The runner's writes at N engines, once a second, from a process of their own: every row's
# heartbeat and lease; 20 engines crash (the 20 before are running again); one in twenty
# trade; then the runner's hint. A real runner of 10,000 engines takes a core of its own,
# and on a loaded 2-core machine its flushes stall; its own figures are the runner sections'.
CREATE_FLEET = """
from django.utils import timezone
from engines_app.models import Engine
now = timezone.now()
Engine.objects.bulk_create(
    Engine(symbol=f"B{{i:05d}}USDT", status="running", started_at=now, lease_owner="runner-f")
    for i in range({engines})
)
"""
FLEET_FLUSHES = """
import random, time
from datetime import timedelta
from django.db.models import F
from django.utils import timezone
from engines_app.models import Engine, RunnerHeartbeat
from engines_app.web.broadcaster import send_hint
pick, crashed = random.Random(7), []
symbols = list(Engine.objects.values_list("symbol", flat=True))
while True:
    now = timezone.now()
    Engine.objects.filter(symbol__in=crashed).update(status="running", updated_at=now)
    crashed = pick.sample(symbols, min(20, len(symbols)))
    Engine.objects.filter(symbol__in=crashed).update(
        status="crashed", last_error="boom", error_count=F("error_count") + 1, updated_at=now
    )
    Engine.objects.filter(symbol__in=pick.sample(symbols, len(symbols) // 20)).update(
        trade_count=F("trade_count") + 1, daily_pnl=F("daily_pnl") + 1.25, updated_at=now
    )
    # Beats and leases alone leave updated_at as it is, as the runner writes them.
    Engine.objects.update(last_heartbeat=now, lease_expires_at=now + timedelta(seconds=15))
    RunnerHeartbeat.objects.update_or_create(
        name="runner-f",
        defaults={"last_seen": now},
        create_defaults={"started_at": now, "last_seen": now},
    )
    send_hint(None)
    time.sleep(1)
"""


@contextmanager
def fleet(data_dir: Path, engines: int, *, redis_url: str | None = None) -> Iterator[Installation]:
    """``engines`` engines written once a second as the runner writes them; the web server."""
    env = {
        "LEVIPANEL_PUSH_INTERVAL": str(PUSH_INTERVAL),
        "LEVIPANEL_CHANNEL_PREFIX": f"lp-bench-{uuid.uuid4().hex[:8]}",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    with Installation(data_dir, env) as installation:
        installation.migrate()
        installation.manage("shell", "-c", CREATE_FLEET.format(engines=engines))
        installation.demo_login()
        installation.serve()
        installation.start("manage.py", "shell", "-c", FLEET_FLUSHES, log_name="flushes")
        yield installation


def measure_fleet(engines: int, *, samples: int, redis_url: str | None = None) -> Latencies:
    """Time ``samples`` pushes of the flushes of ``engines`` engines to one dashboard."""
    with tempfile.TemporaryDirectory(prefix="levipanel-push-") as tmp:
        with fleet(Path(tmp), engines, redis_url=redis_url) as installation:
            with installation.dashboard() as socket_:
                return collect(socket_, samples=samples)


def collect(socket_: ClientConnection, *, samples: int, timeout: float = 120.0) -> Latencies:
    """Time each heartbeat flush from its stamp (``flushed_at``, the runner's ``updated_at``)
    to the arrival of the frame that carries it."""
    latencies = Latencies()
    seen = {socket_.snapshot.get("flushed_at")}
    first = True
    deadline = time.monotonic() + timeout
    while len(latencies.values) < samples:
        frame = json.loads(socket_.recv(timeout=max(0.1, deadline - time.monotonic())))
        arrived = time.time()
        if frame["type"] != "changes":
            continue
        flushed = frame["flushed_at"]
        if first:  # the first look may send a flush older than the snapshot
            first = False
            seen.add(flushed)
            continue
        if flushed not in seen:
            seen.add(flushed)
            latencies.values.append((arrived - flushed) * 1000)
    return latencies


async def layer_round_trip(redis_url: str, *, samples: int) -> list[float]:
    """A bare channels_redis group message, sent and received in one process (ms)."""
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=[redis_url], prefix=f"lp-bench-{uuid.uuid4().hex[:8]}")
    channel = await layer.new_channel()
    group = f"bench-{uuid.uuid4().hex[:8]}"
    await layer.group_add(group, channel)
    out = []
    try:
        for _ in range(samples):
            start = time.perf_counter()
            await layer.group_send(group, {"type": "ping"})
            await layer.receive(channel)
            out.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.01)
    finally:
        await layer.group_discard(group, channel)
        await layer.flush()
    return out


def reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 6379), timeout=1):
            return True
    except OSError:
        return False


def _host_port(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.hostname}:{parsed.port or 6379}"


@contextmanager
def panel(
    data_dir: Path,
    *,
    redis_url: str | None = None,
    symbols: int = 1,
    push_interval: float = PUSH_INTERVAL,
    flush_interval: float = FLUSH_INTERVAL,
) -> Iterator[Installation]:
    """A LeviPanel on ``data_dir`` with its web server and runner started, a demo login made."""
    env = {
        "LEVIPANEL_SYMBOLS": ",".join(["BTCUSDT", "ETHUSDT", "SOLUSDT"][:symbols]),
        "LEVIPANEL_FLUSH_INTERVAL": str(flush_interval),
        "LEVIPANEL_PUSH_INTERVAL": str(push_interval),
        "LEVIPANEL_CHANNEL_PREFIX": f"lp-bench-{uuid.uuid4().hex[:8]}",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    with Installation(data_dir, env) as installation:
        installation.start_panel()
        yield installation


# Bytes per flush: a worker process on a temp data dir ------------------------------------

FILLED_EVERY = 10  # one engine in ten trades in the flush measured


def flush_bytes(*, engines: int) -> dict:
    """Bytes an open dashboard gets for one heartbeat flush of ``engines`` running engines,
    one in ``FILLED_EVERY`` of them with a fill: whole rows (every row the flush wrote, as
    pushed before) and only the changed fields; then a flush that changed nothing but the
    heartbeats. Also the size of a snapshot and the broadcaster's look."""
    from django.core.management import call_command
    from django.db.models import F
    from django.utils import timezone

    from engines_app.models import Engine, RunnerHeartbeat
    from engines_app.selectors import dashboard
    from engines_app.selectors.engines import runners_seen
    from engines_app.web.broadcaster import Broadcaster

    call_command("migrate", verbosity=0, interactive=False)
    now = timezone.now()
    RunnerHeartbeat.objects.create(name="bench", started_at=now, last_seen=now, beats_since=now)
    lease = {"lease_owner": "bench", "lease_expires_at": now + timedelta(minutes=10)}
    Engine.objects.bulk_create(
        Engine(
            symbol=f"B{i:05d}USDT",
            status="running",
            started_at=now,
            last_heartbeat=now,
            last_tick_at=now,
            beats_with_runner=True,  # in step with the runner's flushes
            **lease,
        )
        for i in range(engines)
    )
    broadcaster = Broadcaster(layer=None, interval=PUSH_INTERVAL)
    broadcaster.changes()  # loads the fleet

    def flush(fills: bool) -> tuple[int, int, float]:
        stamp = timezone.now()
        # As the runner writes a flush: the beats of engines in step are its own row's.
        if fills:
            ids = Engine.objects.values_list("id", flat=True)[::FILLED_EVERY]
            Engine.objects.filter(id__in=list(ids)).update(
                trade_count=F("trade_count") + 1,
                position=1.25,
                daily_pnl=F("daily_pnl") + 1.37,
                total_pnl=F("total_pnl") + 1.37,
                updated_at=stamp,
            )
        RunnerHeartbeat.objects.filter(name="bench").update(last_seen=stamp, beats_since=stamp)
        epoch, seen = stamp.timestamp(), runners_seen()
        written = Engine.objects.all()  # every engine beat
        whole = {
            "type": "changes",
            "seq": 1,
            "now": epoch,
            "engines": [dashboard.engine_row(engine, epoch, seen) for engine in written],
            "commands": [],
            "removed": [],
            "runners": None,
        }
        start = time.perf_counter()
        delta = broadcaster.changes()
        look = (time.perf_counter() - start) * 1000
        return _size(whole), _size({"type": "changes", **delta}), look

    whole_fills, delta_fills, look_fills = flush(fills=True)
    whole_beats, delta_beats, look_beats = flush(fills=False)
    start = time.perf_counter()
    broadcaster.changes()  # nothing written since: the stamps of the last flush, compared
    look_idle = (time.perf_counter() - start) * 1000
    _, rows, flushed_at = broadcaster.state()
    old_rows = [dashboard.engine_row(e, time.time(), runners_seen()) for e in Engine.objects.all()]
    return {
        "engines": engines,
        "whole_fills": whole_fills,
        "delta_fills": delta_fills,
        "whole_beats": whole_beats,
        "delta_beats": delta_beats,
        "look_fills_ms": look_fills,
        "look_beats_ms": look_beats,
        "look_idle_ms": look_idle,
        "snapshot": _size({"type": "snapshot", **dashboard.snapshot(rows, flushed_at)}),
        "snapshot_whole_rows": _size({"type": "snapshot", "engines": old_rows}),
    }


def _size(frame: dict) -> int:
    return len(json.dumps(frame).encode())


def bytes_rows(engines: int) -> list[dict]:
    """The bytes per flush at ``engines``, each beside the whole rows of the same flush."""
    with tempfile.TemporaryDirectory(prefix="levipanel-push-") as tmp:
        found = _job(Path(tmp), "bytes", engines=engines)
    whole = "whole rows of every engine the flush wrote (as pushed before)"
    pct = 100 // FILLED_EVERY
    return [
        _kb(
            f"bytes per flush, {engines} engines, {pct} % with a fill",
            found["delta_fills"],
            found["whole_fills"],
            whole,
        ),
        _kb(
            f"bytes per flush, {engines} engines, heartbeats only",
            found["delta_beats"],
            found["whole_beats"],
            whole,
        ),
        _kb(
            f"snapshot, {engines} engines",
            found["snapshot"],
            found["snapshot_whole_rows"],
            "snapshot of whole rows (as sent before)",
        ),
        _ms(
            f"broadcaster look after a flush of {engines} engines, {pct} % with a fill",
            found["look_fills_ms"],
            found["look_idle_ms"],
        ),
        _ms(
            f"broadcaster look after a flush of {engines} engines, heartbeats only",
            found["look_beats_ms"],
            found["look_idle_ms"],
        ),
    ]


def _ms(name: str, value: float, baseline: float) -> dict:
    return {
        "name": name,
        "value": round(value, 1),
        "unit": "ms",
        "baseline": round(baseline, 1),
        "baseline_name": "a look that finds nothing new",
        "target": None,
    }


def _kb(name: str, value: int, baseline: int, baseline_name: str) -> dict:
    return {
        "name": name,
        "value": round(value / 1024, 1),
        "unit": "KB",
        "baseline": round(baseline / 1024, 1),
        "baseline_name": baseline_name,
        "target": None,
    }


def _job(data_dir: Path, job: str, **options: object) -> dict:
    """Run ``job`` in a fresh process on ``data_dir``; its last stdout line is JSON."""
    import subprocess
    import sys

    from engines_app.testing import ROOT, environment

    data_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.push", job, json.dumps(options)],
        cwd=ROOT,
        env=environment(data_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RuntimeError(f"push benchmark job {job!r} failed: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


JOBS = {"bytes": flush_bytes}

if __name__ == "__main__":
    import sys

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levipanel.settings")
    django.setup()
    print(json.dumps(JOBS[sys.argv[1]](**json.loads(sys.argv[2]))), flush=True)
