"""Alerts: from the runner's write, through django-q2, to Slack and Telegram (a local
recording server), with retries, a per-engine rate limit and fleet-wide incidents."""

from __future__ import annotations

import socket
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.checks import run_checks
from django_q.models import Schedule

from engines_app import checks
from engines_app.alerts import rules as alerts
from engines_app.conf import engine_settings
from engines_app.jobs.schedules import SCHEDULES, ensure_schedules
from engines_app.models import Alert, Engine, EngineError, EngineRestart, Incident, RunnerHeartbeat
from engines_app.runner import store
from engines_app.runtime import risk
from engines_app.runtime.broker import Book
from engines_app.runtime.recovery import RecoveryPolicy, RecoverySettings
from engines_app.runtime.risk import RiskLimits
from engines_app.signals import engines_written
from tests.helpers import HttpRecorder, eventually_sync

TOKEN = "123456:test-token"
SLACK = "/slack/T000/B000/hook"
TELEGRAM = f"/telegram/bot{TOKEN}/sendMessage"
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

pytestmark = pytest.mark.django_db


@pytest.fixture
def recorder():
    server = HttpRecorder().start()
    yield server
    server.stop()


@pytest.fixture
def channels(settings, recorder, sync_tasks):
    """Both channels on, pointed at the recorder; no waiting between retries; each alert's
    delivery task runs at once."""
    settings.ALERTS = {
        **settings.ALERTS,
        "SLACK_WEBHOOK_URL": recorder.url + SLACK,
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_CHAT_ID": "42",
        "TELEGRAM_API_BASE": recorder.url + "/telegram",
        "RETRY_DELAY": 0.0,
        "TIMEOUT": 2.0,
    }
    return settings.ALERTS


@pytest.fixture
def sync_tasks(monkeypatch):
    """django-q2 runs each enqueued task at once, in this process, as the cluster would."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)


def make_engines(*symbols: str) -> list[Engine]:
    return [Engine.objects.create(symbol=symbol, status="running") for symbol in symbols]


def status_row(engine: Engine, status: str, reason: str = "", attempt: int = 0, code: str = ""):
    started_at = time.time() if status == "running" else None  # as the runner sets it
    return store.StatusRow(
        engine.id, status, reason, started_at, attempt, 4, None, 1, reason or None, code=code
    )


def write_crashes(*engines: Engine, attempt: int = 1, fail: bool = False) -> None:
    """What the runner writes when engines crash: error, restart, new status, one batch."""
    now = datetime.now(UTC)
    errors, restarts, statuses = [], [], []
    for engine in engines:
        errors.append(
            EngineError(engine=engine, at=now, type="InjectedCrash", message="boom", crashed=True)
        )
        if fail:
            statuses.append(status_row(engine, "failed", "restart limit reached", attempt))
        else:
            restarts.append(
                EngineRestart(
                    engine=engine,
                    at=now,
                    reason="InjectedCrash: boom",
                    attempt=attempt,
                    backoff_seconds=60.0,
                )
            )
            statuses.append(status_row(engine, "backoff", "InjectedCrash: boom", attempt))
    store.write(statuses=statuses, errors=errors, restarts=restarts, heartbeats=[])


def write_running(*engines: Engine) -> None:
    """Engines running again after an automatic restart, in one write."""
    store.write(
        statuses=[status_row(e, "running", attempt=1) for e in engines],
        errors=[],
        restarts=[],
        heartbeats=[],
    )


def write_status(
    engine: Engine, status: str, reason: str = "", attempt: int = 0, code: str = ""
) -> None:
    store.write(
        statuses=[status_row(engine, status, reason, attempt, code)],
        errors=[],
        restarts=[],
        heartbeats=[],
    )


# Each alert kind reaches Slack and Telegram ---------------------------------------------


def halt_reason() -> str:
    """The reason the engine's risk check gives when it halts on the daily loss limit."""
    book = Book()
    book.realized = -120.0  # today's, the day having started at 0
    return risk.daily_loss_reason(RiskLimits(daily_loss_limit=100.0), book)


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda e: write_crashes(e), "BTCUSDT crashed: InjectedCrash: boom (restart 1 in 60.0s)"),
        (lambda e: write_status(e, "running", attempt=2), "BTCUSDT is running again"),
        (lambda e: write_crashes(e, attempt=5, fail=True), "BTCUSDT FAILED and needs an operator"),
        (
            lambda e: write_status(e, "halted", "lost 120.00 today", code=risk.DAILY_LOSS),
            "BTCUSDT stopped on its daily loss limit: lost 120.00 today",  # any wording
        ),
        (
            lambda e: write_status(e, "halted", halt_reason(), code=risk.DAILY_LOSS),
            "BTCUSDT stopped on its daily loss limit: daily loss limit reached: lost 120.00",
        ),
    ],
    ids=["crashed", "restarted", "failed", "daily_loss", "daily_loss_halt"],
)
def test_engine_alert_reaches_both_channels(channels, sync_tasks, recorder, write, expected):
    (engine,) = make_engines("BTCUSDT")
    write(engine)
    assert len(recorder.received) == 2
    slack, telegram = sorted(recorder.received, key=lambda r: r.path)
    assert slack.path == SLACK and expected in slack.body["text"]
    assert telegram.path == TELEGRAM
    assert telegram.body["chat_id"] == "42" and telegram.body["text"] == slack.body["text"]
    alert = Alert.objects.get()
    assert (alert.key, alert.outcome, alert.attempts) == ("BTCUSDT", "sent", 2)
    assert alert.deliveries == {"slack": "ok", "telegram": "ok"}


def test_no_alert_for_plain_status_changes(channels, sync_tasks, recorder):
    (engine,) = make_engines("BTCUSDT")
    write_status(engine, "running")  # a first start, not a restart
    write_status(engine, "stopped", "stopped by operator")
    assert recorder.received == [] and not Alert.objects.exists()


def test_runner_down_then_up(channels, recorder):
    RunnerHeartbeat.objects.create(name="runner-a", started_at=T0, last_seen=T0, engines=7)
    with time_machine.travel(T0 + timedelta(seconds=10), tick=False):
        assert alerts.check_alerts()["runner_alerts"] == 0  # fresh enough
    with time_machine.travel(T0 + timedelta(seconds=45), tick=False):
        assert alerts.check_alerts()["runner_alerts"] == 1
        assert alerts.check_alerts()["runner_alerts"] == 0  # said once, not every minute
    (down,) = recorder.texts(SLACK)
    assert "runner runner-a stopped heart-beating: last seen 45s ago, it hosted 7 engines" in down
    with time_machine.travel(T0 + timedelta(seconds=120), tick=False):
        RunnerHeartbeat.objects.update(last_seen=T0 + timedelta(seconds=119))
        assert alerts.check_alerts()["runner_alerts"] == 1
    assert "RESOLVED: runner runner-a is heart-beating again" in recorder.texts(SLACK)[1]
    assert len(recorder.texts(TELEGRAM)) == 2
    assert list(Alert.objects.order_by("id").values_list("kind", flat=True)) == [
        "runner_down",
        "runner_up",
    ]


def test_a_runner_stopped_on_a_signal_is_not_down(channels, recorder):
    RunnerHeartbeat.objects.create(
        name="runner-a", started_at=T0, last_seen=T0, stopped_at=T0, engines=0
    )
    RunnerHeartbeat.objects.create(name="runner-b", started_at=T0, last_seen=T0, engines=3)
    with time_machine.travel(T0 + timedelta(hours=1), tick=False):
        assert alerts.check_alerts()["runner_alerts"] == 1
    (down,) = recorder.texts(SLACK)
    assert "runner runner-b stopped heart-beating" in down


def runner_took_over(*takeovers: dict) -> None:
    """What the runner sends after its claim committed, with nothing else written."""
    engines_written.send(
        sender=Engine,
        statuses=[],
        errors=[],
        restarts=[],
        heartbeats=False,
        acks=[],
        books=[],
        takeovers=list(takeovers),
    )


def test_a_takeover_is_alerted_naming_both_runners_and_the_engines(channels, recorder):
    make_engines("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")
    runner_took_over(
        {
            "runner": "runner-b",
            "previous": "runner-a",
            "symbols": ["SOLUSDT", "BTCUSDT", "ETHUSDT"],
        },
        {"runner": "runner-c", "previous": "runner-a", "symbols": ["XRPUSDT"]},
    )
    texts = recorder.texts(SLACK)
    assert texts == [
        "LeviPanel: Runner runner-b took over 3 engines from runner runner-a: "
        "BTCUSDT, ETHUSDT, SOLUSDT",
        "LeviPanel: Runner runner-c took over 1 engine from runner runner-a: XRPUSDT",
    ]
    assert recorder.texts(TELEGRAM) == texts
    alerts_made = Alert.objects.order_by("id").values_list("kind", "key", "outcome")
    assert list(alerts_made) == [("takeover", "runner:runner-a", "sent")] * 2


def test_takeovers_count_against_the_rate_limit_of_the_silent_runner(channels, recorder):
    for n in range(5):
        runner_took_over({"runner": f"runner-{n}", "previous": "runner-a", "symbols": ["BTCUSDT"]})
    assert len(recorder.texts(SLACK)) == 3  # ALERT_RATE_LIMIT
    assert Alert.objects.filter(key="runner:runner-a", outcome="suppressed").count() == 2


def test_a_long_takeover_names_the_first_engines_and_counts_the_rest():
    symbols = [f"S{n:02d}USDT" for n in range(25)]
    text = alerts.takeover_text({"runner": "b", "previous": "a", "symbols": symbols})
    assert text.startswith("Runner b took over 25 engines from runner a: S00USDT, S01USDT")
    assert text.endswith("S19USDT and 5 more")


def test_a_write_without_takeovers_alerts_nothing_new(channels, recorder, monkeypatch):
    calls = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda *a, **k: calls.append(a))
    runner_took_over()
    engines_written.send(sender=Engine, statuses=[], errors=[], restarts=[], heartbeats=True)
    assert calls == []


# Delivery failures --------------------------------------------------------------------


def test_failing_webhook_is_retried_then_given_up(channels, sync_tasks, recorder):
    recorder.status[SLACK] = 500
    (engine,) = make_engines("BTCUSDT")
    write_crashes(engine)  # must not raise
    assert len(recorder.texts(SLACK)) == 3  # ALERT_RETRIES
    assert len(recorder.texts(TELEGRAM)) == 1  # the other channel still gets it
    alert = Alert.objects.get()
    assert alert.outcome == "failed" and alert.attempts == 4
    assert alert.error == "slack: gave up after 3 attempts: HTTP 500"
    assert alert.deliveries["telegram"] == "ok" and alert.sent_at is not None


@pytest.fixture
def hung_webhook():
    """A server that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()


def test_a_hung_webhook_is_given_up_within_the_task_timeout(
    channels, recorder, settings, hung_webhook, monkeypatch
):
    """The cluster kills a task past its timeout: the alert would stay pending, unrecorded,
    and hold the other channel back. Each alert is its own task and stays inside it."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "TIMEOUT", 2)  # each delivery may take 1.5 s
    settings.ALERTS = {**channels, "SLACK_WEBHOOK_URL": hung_webhook, "TIMEOUT": 5.0}
    btc, eth = make_engines("BTCUSDT", "ETHUSDT")
    started = time.monotonic()
    write_crashes(btc, eth)  # two alerts from one write
    assert time.monotonic() - started < 2 * 2
    assert len(recorder.texts(TELEGRAM)) == 2  # the live channel got both, at once
    for alert in Alert.objects.all():
        assert alert.outcome == "failed" and alert.deliveries["telegram"] == "ok"
        assert alert.error.startswith("slack: gave up after ")
        assert alert.error.endswith(": ReadTimeout (out of time)")


def test_client_error_is_not_retried_and_dead_server_is_recorded(
    channels, recorder, settings, caplog
):
    recorder.status[TELEGRAM] = 400  # e.g. a wrong chat id
    settings.ALERTS = {**channels, "SLACK_WEBHOOK_URL": "http://127.0.0.1:9/nothing-listens"}
    outcome = alerts.raise_alert("BTCUSDT", "crashed", "boom", now=datetime.now(UTC))
    assert outcome == "failed"
    assert len(recorder.texts(TELEGRAM)) == 1
    alert = Alert.objects.get()
    assert alert.deliveries == {
        "slack": "gave up after 3 attempts: ConnectError",
        "telegram": "refused: HTTP 400",
    }
    assert alert.sent_at is None and TOKEN not in alert.error
    assert TOKEN not in caplog.text


def test_a_broken_broker_never_breaks_the_runners_write(channels, monkeypatch, recorder):
    def broken(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr("django_q.tasks.async_task", broken)
    (engine,) = make_engines("BTCUSDT")
    write_crashes(engine)
    assert EngineError.objects.count() == 1 and Engine.objects.get().status == "backoff"


def test_nothing_is_enqueued_without_a_channel(sync_tasks, monkeypatch):
    calls = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda *a, **k: calls.append(a))
    (engine,) = make_engines("BTCUSDT")
    write_crashes(engine)
    assert calls == []


# Rate limit ---------------------------------------------------------------------------


def test_rate_limit_holds_in_a_crash_loop_then_one_summary(channels, sync_tasks, recorder):
    btc, eth = make_engines("BTCUSDT", "ETHUSDT")
    with time_machine.travel(T0, tick=False):
        for attempt in range(1, 11):
            write_crashes(btc, attempt=attempt)
        write_crashes(eth)  # the limit is per engine
    texts = recorder.texts(SLACK)
    assert sum("BTCUSDT crashed" in t for t in texts) == 3  # ALERT_RATE_LIMIT
    assert sum("ETHUSDT crashed" in t for t in texts) == 1
    assert Alert.objects.filter(outcome="suppressed", key="BTCUSDT").count() == 7

    with time_machine.travel(T0 + timedelta(seconds=300), tick=False):
        assert alerts.check_alerts()["summaries"] == 0  # the window is not over yet
    with time_machine.travel(T0 + timedelta(seconds=601), tick=False):
        assert alerts.check_alerts()["summaries"] == 1
        assert alerts.check_alerts()["summaries"] == 0
    summary = recorder.texts(SLACK)[-1]
    assert "BTCUSDT: 7 more alerts held back by the rate limit" in summary
    assert "crashed x7" in summary and "restart 10 in 60.0s" in summary
    assert Alert.objects.filter(outcome="summarized").count() == 7
    assert len(recorder.texts(SLACK)) == 5

    with time_machine.travel(T0 + timedelta(seconds=700), tick=False):
        write_crashes(btc, attempt=11)  # a new window: alerts flow again
    assert "restart 11 in 60.0s" in recorder.texts(SLACK)[-1]


# Fleet-wide incidents -----------------------------------------------------------------


def test_many_crashes_make_one_incident_then_resolved(channels, sync_tasks, recorder):
    a, b, c, d = make_engines("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT")
    with time_machine.travel(T0, tick=False):
        write_crashes(a, b, c)  # an exchange outage: one write, three crashes
    (incident,) = recorder.texts(SLACK)
    assert "INCIDENT: 3 engines crashed within 60s: AAAUSDT, BBBUSDT, CCCUSDT" in incident
    with time_machine.travel(T0 + timedelta(seconds=5), tick=False):
        write_crashes(d)  # joins the open incident, no alert of its own
    assert Incident.objects.get().symbols == ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT"]
    with time_machine.travel(T0 + timedelta(seconds=65), tick=False):
        for engine in (a, b, c):
            write_status(engine, "running", attempt=1)
    with time_machine.travel(T0 + timedelta(seconds=70), tick=False):
        write_status(d, "running", attempt=1)
    with time_machine.travel(T0 + timedelta(seconds=129), tick=False):
        assert alerts.check_alerts()["incidents_resolved"] == 0  # DDDUSDT ran for 59 s only
    assert len(recorder.texts(SLACK)) == 1
    with time_machine.travel(T0 + timedelta(seconds=131), tick=False):
        assert alerts.check_alerts()["incidents_resolved"] == 1
    resolved = recorder.texts(SLACK)[-1]
    assert "RESOLVED: all 4 engines of the incident are running again after 131s" in resolved
    assert "AAAUSDT, BBBUSDT, CCCUSDT, DDDUSDT" in resolved
    assert len(recorder.texts(SLACK)) == len(recorder.texts(TELEGRAM)) == 2
    assert Alert.objects.filter(outcome="in_incident").count() == 8  # 4 crashes, 4 restarts
    assert Incident.objects.get().resolved_at is not None


def test_a_restart_that_crashes_again_does_not_resolve_the_incident(channels, sync_tasks, recorder):
    """An outage that lasts: the engines come back, crash again; one incident, one resolved."""
    engines = make_engines("AAAUSDT", "BBBUSDT", "CCCUSDT")
    for second, write in (
        (0, write_crashes),
        (60, write_running),
        (65, write_crashes),
        (185, write_running),
    ):
        with time_machine.travel(T0 + timedelta(seconds=second), tick=False):
            write(*engines)
            alerts.check_alerts()
    with time_machine.travel(T0 + timedelta(seconds=240), tick=False):
        assert alerts.check_alerts()["incidents_resolved"] == 0  # 55 s of running so far
    with time_machine.travel(T0 + timedelta(seconds=246), tick=False):
        assert alerts.check_alerts()["incidents_resolved"] == 1
    texts = recorder.texts(SLACK)
    assert len(texts) == 2 and "INCIDENT: 3 engines" in texts[0]
    assert "RESOLVED: all 3 engines of the incident are running again after 246s" in texts[1]
    assert Incident.objects.count() == 1


def test_an_incident_with_a_failed_engine_is_resolved_naming_it(channels, sync_tasks, recorder):
    a, b, c = make_engines("AAAUSDT", "BBBUSDT", "CCCUSDT")
    with time_machine.travel(T0, tick=False):
        write_crashes(a, b, c)
    with time_machine.travel(T0 + timedelta(seconds=60), tick=False):
        write_running(a, b)
        write_crashes(c, attempt=5, fail=True)  # its own FAILED alert asks for an operator
    with time_machine.travel(T0 + timedelta(seconds=121), tick=False):
        assert alerts.check_alerts()["incidents_resolved"] == 1
    incident, failed, resolved = recorder.texts(SLACK)
    assert "CCCUSDT FAILED and needs an operator" in failed
    assert resolved == (
        "LeviPanel RESOLVED: the incident of 3 engines is over after 121s: running again: "
        "AAAUSDT, BBBUSDT; failed or halted (needs an operator): CCCUSDT."
    )


def test_a_lone_crash_long_after_an_incident_opened_is_alerted(channels, sync_tasks, recorder):
    a, b, c, d = make_engines("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT")
    with time_machine.travel(T0, tick=False):
        write_crashes(a, b, c)  # still crash-looping below: the incident stays open
    with time_machine.travel(T0 + timedelta(seconds=600), tick=False):
        write_crashes(a, attempt=4)  # a member: folded
        write_crashes(d)  # not a member, and the incident is old: its own alert
    texts = recorder.texts(SLACK)
    assert len(texts) == 2 and "DDDUSDT crashed: InjectedCrash: boom" in texts[1]
    assert Incident.objects.get().symbols == ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
    assert Alert.objects.get(key="AAAUSDT", text__contains="restart 4").outcome == "in_incident"


def test_crashes_in_separate_writes_within_the_window_open_an_incident(
    channels, sync_tasks, recorder
):
    a, b, c = make_engines("AAAUSDT", "BBBUSDT", "CCCUSDT")
    write_crashes(a)
    write_crashes(b)
    write_crashes(c)
    texts = recorder.texts(SLACK)
    assert len(texts) == 3 and "CCCUSDT crashed" not in " ".join(texts)
    assert "INCIDENT: 3 engines crashed within 60s: AAAUSDT, BBBUSDT, CCCUSDT" in texts[-1]


def test_crashes_outside_the_window_stay_single(channels, sync_tasks, recorder):
    a, b, c = make_engines("AAAUSDT", "BBBUSDT", "CCCUSDT")
    with time_machine.travel(T0, tick=False):
        write_crashes(a, b)
    with time_machine.travel(T0 + timedelta(seconds=61), tick=False):
        write_crashes(c)
    assert not Incident.objects.exists()
    assert len(recorder.texts(SLACK)) == 3


def test_restarts_are_staggered_when_many_fail_together():
    clock = [1000.0]
    settings = RecoverySettings(
        backoff_base=60.0, jitter=0.0, stagger_window=10.0, stagger_step=2.0
    )
    policy = RecoveryPolicy(settings, clock=lambda: clock[0])
    delays = [policy.on_failure(symbol).delay for symbol in ("A1", "B1", "C1", "D1")]
    assert delays == [60.0, 62.0, 64.0, 66.0]
    clock[0] += 11  # the window is over: a lone crash waits its plain backoff
    assert policy.on_failure("E1").delay == 60.0
    assert policy.on_failure("E1").delay == 120.0  # its own earlier crash does not stagger it


def test_a_single_crash_keeps_the_plain_backoff():
    for stagger in (
        RecoverySettings(jitter=0.0),
        RecoverySettings(jitter=0.0, stagger_window=10, stagger_step=1),
    ):
        assert RecoveryPolicy(stagger, clock=lambda: 5.0).on_failure("A1").delay == 60.0


def test_the_runner_staggers_by_default():
    recovery = engine_settings().recovery()
    assert (recovery.stagger_window, recovery.stagger_step) == (10.0, 1.0)


def test_stagger_is_capped():
    settings = RecoverySettings(
        backoff_base=1.0, backoff_cap=5.0, jitter=0.0, stagger_window=10.0, stagger_step=4.0
    )
    policy = RecoveryPolicy(settings, clock=lambda: 0.0)
    delays = [policy.on_failure(f"S{i}").delay for i in range(4)]
    assert delays == [1.0, 5.0, 6.0, 6.0]


# A daily-loss stop is known by its code, never by its wording ---------------------------


@pytest.mark.parametrize(
    ("status", "reason", "code", "kind"),
    [
        ("halted", "Tageslimit erreicht", risk.DAILY_LOSS, Alert.Kind.DAILY_LOSS),
        ("halted", "daily loss limit reached", risk.DAILY_LOSS, Alert.Kind.DAILY_LOSS),
        ("stopped", "daily loss limit reached", "", None),  # the words alone are not it
        ("failed", "daily loss limit hit", "", Alert.Kind.FAILED),
    ],
)
def test_a_daily_loss_stop_is_known_by_its_code(status, reason, code, kind):
    (engine,) = make_engines("BTCUSDT")
    events = alerts.engine_events([status_row(engine, status, reason, code=code)], [], [])
    assert [event["kind"] for event in events] == ([kind] if kind else [])


# Schedules and settings ---------------------------------------------------------------


def test_schedules_exist_after_migrate_and_are_created_once():
    names = {name for name, *_ in SCHEDULES}
    assert set(Schedule.objects.values_list("name", flat=True)) >= names
    Schedule.objects.filter(name="levipanel: retention").update(schedule_type="W")
    ensure_schedules()
    assert Schedule.objects.filter(name__in=names).count() == 2
    assert Schedule.objects.get(name="levipanel: retention").schedule_type == "W"  # kept
    assert Schedule.objects.get(name="levipanel: alerts check").minutes == 1


def test_bad_alert_and_metrics_settings_are_reported(settings):
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8", "not-an-ip"]
    settings.ALERTS = {**settings.ALERTS, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": ""}
    problems = checks.ops_problems()
    assert "METRICS_ALLOWED_IPS: 'not-an-ip' is not an IP address or network" in problems
    assert "TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID: set both, or neither" in problems
    assert {e.id for e in run_checks()} >= {"levipanel.E002"}


def test_bad_environment_values_fail_the_check(project):
    project.env.update(ALERT_RATE_LIMIT="zero", RETENTION_DAYS="0")
    result = project.manage("check", check=False)
    assert result.returncode != 0
    assert "levipanel.E002" in result.stderr and "ALERT_RATE_LIMIT" in result.stderr
    assert "RETENTION_DAYS" in result.stderr


# The whole path: a real runner, the ORM broker and a real qcluster ----------------------


def test_runner_crash_reaches_slack_through_a_real_qcluster(project, recorder):
    project.env.update(
        SLACK_WEBHOOK_URL=recorder.url + SLACK,
        LEVIPANEL_BACKOFF_BASE="0.2",
        LEVIPANEL_RUNNER_NAME="runner-e2e",
        ALERT_RETRY_DELAY="0",
    )
    create = (
        "from engines_app.models import Engine; Engine.objects.create(symbol='BTCUSDT', "
        "cycle_interval=0.05, config={'crash_after_cycles': 3})"
    )
    project.manage("shell", "-c", create)
    runner = project.start("manage.py", "runengines", "--symbols", "BTCUSDT", log_name="runner")
    cluster = project.start("manage.py", "qcluster", log_name="qcluster")

    def received(part: str) -> list[str]:
        return [text for text in recorder.texts(SLACK) if part in text]

    # Two workers: the crash and the restart alerts may arrive in either order.
    eventually_sync(
        lambda: received("BTCUSDT is running again") and received("BTCUSDT crashed"),
        timeout=30,
        message=f"no alerts; runner/qcluster logs in {runner.log_path}, {cluster.log_path}",
    )
    assert any(
        "InjectedCrash: injected crash after 3 cycles (restart 1 in" in text
        for text in received("BTCUSDT crashed")
    )
    db = sqlite3.connect(project.data_dir / "levipanel.sqlite3")
    sent = "SELECT COUNT(*) FROM engines_app_alert WHERE outcome = 'sent'"
    # The server has the text a moment before the task records the delivery.
    eventually_sync(lambda: db.execute(sent).fetchone()[0] >= 2, message="deliveries not recorded")
    (engines,) = db.execute(
        "SELECT engines FROM engines_app_runnerheartbeat WHERE name = 'runner-e2e'"
    ).fetchone()
    assert engines <= 1
    db.close()


def test_operators_read_alerts_in_the_admin(admin_client):
    Alert.objects.create(
        key="BTCUSDT",
        kind="crashed",
        text="boom",
        created_at=T0,
        outcome="failed",
        error="slack: refused: HTTP 404",
    )
    page = admin_client.get("/admin/engines_app/alert/")
    assert page.status_code == 200 and b"slack: refused: HTTP 404" in page.content
    assert admin_client.get("/admin/engines_app/alert/add/").status_code == 403
    assert admin_client.get("/admin/engines_app/runnerheartbeat/").status_code == 200
