"""Alerts: what the runner wrote becomes django-q2 tasks that notify Slack and Telegram.

The ``engines_written`` receiver runs inside the runner, so it only picks the alert-worthy
rows and enqueues one task; the task (in ``qcluster``) rate-limits, groups crashes into
fleet-wide incidents and delivers. All alert state is in the database (``Alert``,
``Incident``, ``RunnerHeartbeat.down_since``), so it holds across processes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ..models import Alert, Engine, EngineError, Incident, RunnerHeartbeat
from ..runtime.risk import DAILY_LOSS
from . import channels as alert_channels

log = logging.getLogger("levipanel.alerts")

Kind = Alert.Kind
Outcome = Alert.Outcome
FLEET = "fleet"
# Alerts that count against an engine's rate limit (a summary does not).
RATE_LIMITED_OUTCOMES = (Outcome.PENDING, Outcome.SENT, Outcome.FAILED)


def is_daily_loss_stop(code: str) -> bool:
    """The one place that recognises an engine stopped by its daily loss limit: by the
    status's code, never by the wording of its reason."""
    return code == DAILY_LOSS


def enabled() -> bool:
    return bool(alert_channels.channels())


# The receiver (runs in the runner) ------------------------------------------------------


def on_engines_written(
    sender: Any, *, statuses=(), errors=(), restarts=(), takeovers=(), **kwargs
) -> None:
    """Enqueue one task for the alert-worthy rows of a write and the engines it took over
    from silent runners. Never raises."""
    try:
        events = engine_events(statuses, errors, restarts)
        moved = takeover_events(takeovers)
        if (events or moved) and enabled():
            from django_q.tasks import async_task

            async_task(
                "engines_app.alerts.rules.handle_engine_events", events, moved, task_name="alerts"
            )
    except Exception:  # an alert must never take the runner down
        log.exception("could not enqueue alerts")


def engine_events(statuses, errors, restarts) -> list[dict]:
    """Plain dicts (they are pickled into the task) for crashes, restarts, failures and
    daily-loss stops. A crash that failed the engine is reported once, as the failure."""
    restart_of = {row.engine_id: row for row in restarts}
    status_of = {row.id: row for row in statuses}
    events = []
    for error in errors:
        if not error.crashed:
            continue
        row = status_of.get(error.engine_id)
        if row is not None and row.status == Engine.Status.FAILED:
            continue
        detail = f"{error.type}: {error.message}"
        if (restart := restart_of.get(error.engine_id)) is not None:
            detail += f" (restart {restart.attempt} in {restart.backoff_seconds:.1f}s)"
        events.append(_event(Kind.CRASHED, error.engine_id, detail))
    for row in statuses:
        if is_daily_loss_stop(row.code):
            events.append(_event(Kind.DAILY_LOSS, row.id, row.reason))
        elif row.status == Engine.Status.FAILED:
            events.append(_event(Kind.FAILED, row.id, row.reason))
        elif row.status == Engine.Status.RUNNING and row.attempt >= 1:
            events.append(_event(Kind.RESTARTED, row.id, f"after restart {row.attempt}"))
    return events


def _event(kind: str, engine_id: int, detail: str) -> dict:
    return {"kind": str(kind), "engine_id": engine_id, "detail": detail}


def takeover_events(takeovers) -> list[dict]:
    """Plain copies of the claims of engines whose runner's lease had run out."""
    return [
        {
            "runner": str(takeover["runner"]),
            "previous": str(takeover["previous"]),
            "symbols": sorted(map(str, takeover["symbols"])),
        }
        for takeover in takeovers
        if takeover.get("symbols")
    ]


# Tasks (run in qcluster) ----------------------------------------------------------------


def handle_engine_events(events: list[dict], takeovers: Sequence[dict] = ()) -> dict[str, int]:
    """Record, group, rate-limit and deliver the alerts of one runner write."""
    now = timezone.now()
    outcomes: Counter[str] = Counter()
    for takeover in takeovers:
        text = f"LeviPanel: {takeover_text(takeover)}"
        key = f"runner:{takeover['previous']}"
        outcomes[raise_alert(key, Kind.TAKEOVER, text, now=now)] += 1
    symbols = dict(
        Engine.objects.filter(id__in={e["engine_id"] for e in events}).values_list("id", "symbol")
    )
    crashed = {
        symbols[e["engine_id"]]
        for e in events
        if e["kind"] == Kind.CRASHED and e["engine_id"] in symbols
    }
    in_incident = _track_incident(crashed, now) if crashed else _open_incident_symbols()
    for event in events:
        symbol = symbols.get(event["engine_id"])
        if symbol is None:
            continue  # removed meanwhile
        text = f"LeviPanel: {symbol} {_headline(event['kind'])}: {event['detail']}"
        folded = event["kind"] in (Kind.CRASHED, Kind.RESTARTED) and symbol in in_incident
        outcomes[raise_alert(symbol, event["kind"], text, now=now, folded=folded)] += 1
    resolve_incidents(now)
    send_summaries(now)
    return dict(outcomes)


def check_alerts() -> dict[str, int]:
    """The every-minute check: runners' heartbeats, incidents over, summaries due."""
    now = timezone.now()
    return {
        "runner_alerts": check_runners(now),
        "incidents_resolved": resolve_incidents(now),
        "summaries": send_summaries(now),
    }


# Alerts, rate limit and summaries -------------------------------------------------------


def raise_alert(key: str, kind: str, text: str, *, now: datetime, folded: bool = False) -> str:
    """Record an alert; deliver it unless its key is over the rate limit. Its outcome."""
    conf = settings.ALERTS
    with transaction.atomic():
        # Serialise the count-then-insert per engine on PostgreSQL (SQLite's IMMEDIATE
        # transactions already do): two workers must not both slip under the limit.
        list(Engine.objects.select_for_update().filter(symbol=key).values_list("id"))
        if folded:
            outcome = Outcome.IN_INCIDENT
        else:
            since = now - timedelta(seconds=conf["RATE_WINDOW"])
            recent = Alert.objects.filter(
                key=key, created_at__gt=since, outcome__in=RATE_LIMITED_OUTCOMES
            ).exclude(kind=Kind.SUMMARY)
            limited = kind != Kind.SUMMARY and recent.count() >= conf["RATE_LIMIT"]
            outcome = Outcome.SUPPRESSED if limited else Outcome.PENDING
        alert = Alert.objects.create(key=key, kind=kind, text=text, created_at=now, outcome=outcome)
    if outcome == Outcome.PENDING:
        _enqueue_delivery(alert)
    return alert.outcome


def _enqueue_delivery(alert: Alert) -> None:
    """Deliver in a task of its own: its retries get a whole task's time, and a dead
    webhook holds up no other alert of the batch."""
    from django_q.tasks import async_task

    try:
        async_task("engines_app.alerts.rules.deliver_alert", alert.id, task_name="alert delivery")
    except Exception:  # the broker is gone: deliver here rather than not at all
        log.exception("alert %s: could not enqueue its delivery", alert.id)
        _deliver(alert)
        return
    alert.refresh_from_db(fields=["outcome"])  # delivered already when tasks run inline


def deliver_alert(alert_id: int) -> str:
    """Task: deliver one recorded alert (once: a re-run finds it no longer pending)."""
    alert = Alert.objects.filter(id=alert_id, outcome=Outcome.PENDING).first()
    if alert is None:
        return "not pending"
    _deliver(alert)
    return alert.outcome


def _deliver(alert: Alert) -> None:
    try:
        results, attempts = alert_channels.deliver(alert.text)
    except Exception as exc:  # a bug here must not lose the record of the alert
        log.exception("alert %s: delivery broke", alert.id)
        results, attempts = {"delivery": f"error: {type(exc).__name__}: {exc}"}, 0
    failed = {name: result for name, result in results.items() if result != alert_channels.OK}
    alert.deliveries = results
    alert.attempts = attempts
    if not results:
        alert.outcome = Outcome.DISABLED
    elif failed:
        alert.outcome = Outcome.FAILED
        alert.error = "; ".join(f"{name}: {result}" for name, result in failed.items())
        log.error(
            "alert %s (%s %s) not delivered: %s", alert.id, alert.kind, alert.key, alert.error
        )
    else:
        alert.outcome = Outcome.SENT
    if len(failed) < len(results):
        alert.sent_at = timezone.now()
    alert.save(update_fields=["deliveries", "attempts", "outcome", "error", "sent_at"])


def send_summaries(now: datetime) -> int:
    """For each key whose first held-back alert is a rate window old: one summary."""
    window = timedelta(seconds=settings.ALERTS["RATE_WINDOW"])
    keys = (
        Alert.objects.filter(outcome=Outcome.SUPPRESSED, created_at__lte=now - window)
        .values_list("key", flat=True)
        .distinct()
    )
    sent = 0
    for key in list(keys):
        with transaction.atomic():
            held = list(Alert.objects.filter(key=key, outcome=Outcome.SUPPRESSED).order_by("id"))
            ids = [alert.id for alert in held]
            claimed = Alert.objects.filter(id__in=ids, outcome=Outcome.SUPPRESSED)
            if not held or claimed.update(outcome=Outcome.SUMMARIZED) != len(held):
                continue  # another worker is summarising this key
        raise_alert(key, Kind.SUMMARY, _summary_text(key, held), now=now)
        sent += 1
    return sent


def _summary_text(key: str, held: list[Alert]) -> str:
    kinds = Counter(alert.kind for alert in held)
    counts = ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items()))
    minutes = max(1, round((held[-1].created_at - held[0].created_at).total_seconds() / 60))
    return (
        f"LeviPanel: {key}: {len(held)} more alerts held back by the rate limit over "
        f"~{minutes} min ({counts}). Latest: {held[-1].text}"
    )


def takeover_text(takeover: dict, shown: int = 20) -> str:
    """``Runner B took over 3 engines from runner A: BTCUSDT, ETHUSDT, SOLUSDT``."""
    symbols = takeover["symbols"]
    names = ", ".join(symbols[:shown])
    if len(symbols) > shown:
        names += f" and {len(symbols) - shown} more"
    count = f"{len(symbols)} engine{'s' if len(symbols) != 1 else ''}"
    return (
        f"Runner {takeover['runner']} took over {count} from runner {takeover['previous']}: {names}"
    )


def _headline(kind: str) -> str:
    return {
        Kind.CRASHED: "crashed",
        Kind.RESTARTED: "is running again",
        Kind.FAILED: "FAILED and needs an operator",
        Kind.DAILY_LOSS: "stopped on its daily loss limit",
    }[kind]


# Fleet-wide incidents -------------------------------------------------------------------


def _open_incident_symbols() -> set[str]:
    incident = Incident.objects.filter(resolved_at=None).first()
    return set(incident.symbols) if incident else set()


def _track_incident(crashed: set[str], now: datetime) -> set[str]:
    """Open an incident when enough engines crashed within the window, or widen the open
    one; return the symbols whose own crash alerts it replaces."""
    conf = settings.ALERTS
    with transaction.atomic():
        incident = Incident.objects.select_for_update().filter(resolved_at=None).first()
        since = now - timedelta(seconds=conf["INCIDENT_WINDOW"])
        if incident is not None:
            # Its members' crash loops stay folded; another engine joins only while the
            # incident is young, so a lone crash long after it still gets its own alert.
            joining = crashed - set(incident.symbols) if incident.opened_at >= since else set()
            if joining:
                incident.symbols = sorted(set(incident.symbols) | joining)
                incident.save(update_fields=["symbols"])
            return set(incident.symbols)
        recent = (
            set(
                EngineError.objects.filter(crashed=True, at__gte=since)
                .values_list("engine__symbol", flat=True)
                .distinct()
            )
            | crashed
        )
        if len(recent) < conf["INCIDENT_MIN_ENGINES"]:
            return set()
        incident = Incident.objects.create(opened_at=now, symbols=sorted(recent))
    names = ", ".join(incident.symbols)
    window = conf["INCIDENT_WINDOW"]
    text = (
        f"LeviPanel INCIDENT: {len(incident.symbols)} engines crashed within {window:.0f}s: "
        f"{names}. Their restarts are staggered; a resolved alert follows when all run again."
    )
    raise_alert(FLEET, Kind.INCIDENT, text, now=now)
    return set(incident.symbols)


def resolve_incidents(now: datetime) -> int:
    """Close the open incident once every engine in it that should run has run for an
    incident window again (a restart that crashes at once is no recovery) or rests failed
    or halted, each of those with an alert of its own that asks for an operator."""
    incident = Incident.objects.filter(resolved_at=None).first()
    if incident is None:
        return 0
    stable_since = now - timedelta(seconds=settings.ALERTS["INCIDENT_WINDOW"])
    members = Engine.objects.filter(
        symbol__in=incident.symbols, desired_state=Engine.DesiredState.RUNNING
    )
    resting = (Engine.Status.FAILED, Engine.Status.HALTED)
    stable = Q(status=Engine.Status.RUNNING, started_at__lte=stable_since)
    if members.exclude(stable | Q(status__in=resting)).exists():
        return 0
    if not Incident.objects.filter(id=incident.id, resolved_at=None).update(resolved_at=now):
        return 0
    lasted = (now - incident.opened_at).total_seconds()
    stuck = sorted(members.filter(status__in=resting).values_list("symbol", flat=True))
    if not stuck:
        text = (
            f"LeviPanel RESOLVED: all {len(incident.symbols)} engines of the incident are "
            f"running again after {lasted:.0f}s: {', '.join(incident.symbols)}."
        )
    else:
        back = sorted(members.filter(status=Engine.Status.RUNNING).values_list("symbol", flat=True))
        text = (
            f"LeviPanel RESOLVED: the incident of {len(incident.symbols)} engines is over "
            f"after {lasted:.0f}s: running again: {', '.join(back) or 'none'}; "
            f"failed or halted (needs an operator): {', '.join(stuck)}."
        )
    raise_alert(FLEET, Kind.INCIDENT_RESOLVED, text, now=now)
    return 1


# The runner's own heartbeat -------------------------------------------------------------


def check_runners(now: datetime) -> int:
    """Alert once when a runner's heartbeat goes stale, and once when it comes back. A
    runner that stopped on a signal (``stopped_at``) released its engines: it is not down."""
    stale_before = now - timedelta(seconds=settings.ALERTS["RUNNER_STALE_AFTER"])
    sent = 0
    for runner in RunnerHeartbeat.objects.all():
        key = f"runner:{runner.name}"
        rows = RunnerHeartbeat.objects.filter(id=runner.id)
        stale = runner.last_seen < stale_before
        if stale and runner.down_since is None and runner.stopped_at is None:
            if rows.filter(down_since=None).update(down_since=now):
                age = (now - runner.last_seen).total_seconds()
                text = (
                    f"LeviPanel: runner {runner.name} stopped heart-beating: last seen "
                    f"{age:.0f}s ago, it hosted {runner.engines} engines."
                )
                raise_alert(key, Kind.RUNNER_DOWN, text, now=now)
                sent += 1
        elif not stale and runner.down_since is not None:
            if rows.filter(down_since=runner.down_since).update(down_since=None):
                text = (
                    f"LeviPanel RESOLVED: runner {runner.name} is heart-beating again "
                    f"(reported down at {runner.down_since:%Y-%m-%d %H:%M:%S} UTC)."
                )
                raise_alert(key, Kind.RUNNER_UP, text, now=now)
                sent += 1
    return sent
