"""Prometheus metrics at ``/metrics``, derived from the database on every scrape.

Reading the database (not a process's memory) keeps the numbers right with any number of
runners and web processes: every scrape of any web process sees the whole fleet. The cycle
duration histogram is measured by each runner and stored in its heartbeat row, so it is
exposed per runner (label ``runner``).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator, Mapping

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..models import (
    Alert,
    Engine,
    EngineRestart,
    Incident,
    PrunedRestarts,
    RunnerHeartbeat,
    shown_heartbeat,
)
from ..runtime import ACTIVE
from ..selectors.engines import RunnerSeen, runners_seen, shown_status, status_counts
from ..selectors.runners import live_since, runner_live
from .clients import client_address, networks, within

LOOPBACK = ["127.0.0.1", "::1"]
ENGINE_COLUMNS = (
    "id",
    "symbol",
    "status",
    "last_heartbeat",
    "error_count",
    "trade_count",
    "daily_pnl",
    "total_pnl",
    "position",
    "lease_owner",
    "lease_expires_at",
    "beats_with_runner",
)


class FleetCollector:
    """Collect the fleet's metrics from the database."""

    def collect(self) -> Iterator[Metric]:
        now, seen = time.time(), runners_seen()  # before the engines: see ``runners_seen``
        engines = list(Engine.objects.values_list(*ENGINE_COLUMNS))
        yield self._by_status([shown_status(row[2], row[9], row[10], now) for row in engines])
        yield from self._per_engine(engines, now, seen)
        yield from self._runners(now)
        yield from self._alerts()

    def _by_status(self, statuses: list[str]) -> Metric:
        family = GaugeMetricFamily(
            "levipanel_engines",
            "Engines by status; unknown: no live runner holds the engine.",
            labels=["status"],
        )
        counts = status_counts(statuses)
        del counts["total"]  # the sum of the series, not a status
        for status, count in counts.items():
            family.add_metric([status], count)
        return family

    def _per_engine(
        self, engines: list[tuple], now: float, seen: Mapping[str, RunnerSeen]
    ) -> Iterator[Metric]:
        per_engine = EngineRestart.objects.values("engine_id").annotate(n=Count("id"))
        restarts = dict(per_engine.values_list("engine_id", "n"))
        pruned = dict(PrunedRestarts.objects.values_list("engine_id", "count"))
        lab = ["symbol"]
        restarts_f = CounterMetricFamily(
            "levipanel_engine_restarts", "Restarts decided by the recovery policy.", labels=lab
        )
        errors_f = CounterMetricFamily(
            "levipanel_engine_errors", "Errors raised by the engine.", labels=lab
        )
        fills_f = CounterMetricFamily("levipanel_engine_fills", "Fills (trades).", labels=lab)
        age_f = GaugeMetricFamily(
            "levipanel_engine_heartbeat_age_seconds",
            "Seconds since the last heartbeat of a running, degraded or stopping engine.",
            labels=lab,
        )
        daily_f = GaugeMetricFamily("levipanel_engine_daily_pnl", "Daily PnL.", labels=lab)
        total_f = GaugeMetricFamily("levipanel_engine_total_pnl", "Total PnL.", labels=lab)
        position_f = GaugeMetricFamily("levipanel_engine_position", "Open position.", labels=lab)
        for row in engines:
            pk, symbol, status, stored, errors, trades, daily, total, position = row[:9]
            owner, in_step = row[9], row[11]
            runner = seen.get(owner) if in_step and owner else None
            heartbeat = shown_heartbeat(stored, in_step, runner.beats_since if runner else None)
            restarts_f.add_metric([symbol], restarts.get(pk, 0) + pruned.get(pk, 0))
            errors_f.add_metric([symbol], errors)
            fills_f.add_metric([symbol], trades)
            daily_f.add_metric([symbol], daily)
            total_f.add_metric([symbol], total)
            if position is not None:
                position_f.add_metric([symbol], position)
            # The stored status: an engine whose runner died keeps its growing age.
            if heartbeat is not None and status in ACTIVE:
                age_f.add_metric([symbol], max(0.0, now - heartbeat.timestamp()))
        yield from (restarts_f, errors_f, fills_f, age_f, daily_f, total_f, position_f)

    def _runners(self, now: float) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "levipanel_runner_heartbeat_age_seconds",
            "Seconds since the runner's last heartbeat.",
            labels=["runner"],
        )
        cycles = HistogramMetricFamily(
            "levipanel_engine_cycle_duration_seconds",
            "Duration of engines' trading cycles, per runner since it started.",
            labels=["runner"],
        )
        held = GaugeMetricFamily(
            "levipanel_runner_engines",
            "Engines whose lease the runner holds (live runners only).",
            labels=["runner"],
        )
        since = live_since()
        for runner in RunnerHeartbeat.objects.all():
            age.add_metric([runner.name], max(0.0, now - runner.last_seen.timestamp()))
            buckets, total = _cumulative(runner.cycle_histogram)
            if buckets:
                cycles.add_metric([runner.name], buckets, total)
            if runner_live(runner, since):
                held.add_metric([runner.name], runner.held)
        yield age
        yield cycles
        yield held

    def _alerts(self) -> Iterator[Metric]:
        alerts = CounterMetricFamily(
            "levipanel_alerts", "Alerts by kind and outcome.", labels=["kind", "outcome"]
        )
        rows = Alert.objects.values("kind", "outcome").annotate(n=Count("id")).order_by()
        for row in rows:
            alerts.add_metric([row["kind"], row["outcome"]], row["n"])
        yield alerts
        yield GaugeMetricFamily(
            "levipanel_incidents_open",
            "Fleet-wide incidents not resolved yet.",
            value=Incident.objects.filter(resolved_at=None).count(),
        )


def _cumulative(snapshot: dict) -> tuple[list[tuple[str, float]], float]:
    """A stored CycleHistogram snapshot as Prometheus' cumulative ``le`` buckets."""
    bounds, counts = snapshot.get("buckets") or [], snapshot.get("counts") or []
    if len(counts) != len(bounds) + 1:
        return [], 0.0
    out, running = [], 0
    for bound, count in zip([*map(str, bounds), "+Inf"], counts, strict=True):
        running += count
        out.append((bound, running))
    return out, float(snapshot.get("sum") or 0.0)


def render() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector())
    return generate_latest(registry)


def refusal(request: HttpRequest) -> JsonResponse | None:
    """Why this client may not scrape, as a 401/403 JSON response; None when it may.

    The address is the peer's own, or the one a trusted proxy forwarded (``clients``)."""
    token = settings.METRICS_TOKEN
    if not token and settings.METRICS_TOKEN_REQUIRED:
        # Served beyond this host without a token (levipanel.E004): closed, not open.
        return JsonResponse({"detail": "set METRICS_TOKEN to read the metrics"}, status=403)
    allowed = settings.METRICS_ALLOWED_IPS
    if allowed is None:
        allowed = [] if token else LOOPBACK
    if within(client_address(request), networks(allowed)):
        return None
    if token:
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return None
        response = JsonResponse({"detail": "a valid bearer token is required"}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return JsonResponse({"detail": "this address may not read the metrics"}, status=403)


@csrf_exempt  # it changes nothing; a POST must get the JSON 405, not the CSRF page
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text format; refused with a JSON 401/403/405 otherwise."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse({"detail": "use GET"}, status=405)
        response["Allow"] = "GET, HEAD"
        return response
    if (refused := refusal(request)) is not None:
        return refused
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
