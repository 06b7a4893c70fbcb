from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Case, F, OuterRef, Subquery, When
from django.db.models.functions import Coalesce, Greatest

from .runtime import Status as RuntimeStatus
from .runtime.engine import MAX_CYCLE, EngineConfig, symbol_problem
from .runtime.errors import ConfigError

# The permission to start, stop, restart, add, remove and configure engines (Engine.Meta).
CONTROL_PERMISSION = "engines_app.control_engine"
# The separate permission to set an engine's broker to live (real orders), or to change
# the broker or account of a live engine (Engine.Meta).
LIVE_PERMISSION = "engines_app.trade_live"

# What operators read for a status; the others are their capitalised value.
STATUS_LABELS = {
    RuntimeStatus.DEGRADED: "Degraded (market data silent)",
    RuntimeStatus.HALTED: "Halted (risk limit)",
    RuntimeStatus.BACKOFF: "Waiting to restart",
    RuntimeStatus.FAILED: "Failed (needs an operator)",
}


def validate_symbol(value: str) -> None:
    if problem := symbol_problem(value):
        raise ValidationError(problem, code="invalid_symbol")


Moment = TypeVar("Moment", datetime, float)


def heartbeat_expression(field: str = "last_heartbeat") -> models.Expression:
    """An engine's heartbeat in SQL (``shown_heartbeat`` in Python): its stored one, or,
    while it beats in step with its runner, the later of that and the runner's
    ``beats_since``. A flush of a fleet in step writes the runner's row alone. Its last
    tick is shown the same way (``field="last_tick_at"``)."""
    beats = RunnerHeartbeat.objects.filter(name=OuterRef("lease_owner")).values("beats_since")
    runner, beat = Subquery(beats[:1]), F(field)
    with_runner = Greatest(Coalesce(runner, beat), Coalesce(beat, runner))
    return Case(
        When(beats_with_runner=True, then=with_runner),
        default=beat,
        output_field=models.DateTimeField(),
    )


def shown_heartbeat(
    stored: Moment | None, with_runner: bool, beats_since: Moment | None
) -> Moment | None:
    """``heartbeat_expression`` for a row read as it is stored (datetimes, or Unix
    seconds): ``beats_since`` is its lease holder's (None: no runner's row)."""
    if not with_runner or beats_since is None:
        return stored
    return beats_since if stored is None else max(stored, beats_since)


class EngineQuerySet(models.QuerySet):
    def with_heartbeat(self) -> EngineQuerySet:
        """Each engine's heartbeat as ``heartbeat`` (``heartbeat_expression``)."""
        return self.annotate(heartbeat=heartbeat_expression())


class Engine(models.Model):
    """One symbol's engine: what operators want (desired state, config) and what the
    runner reports (status, heartbeat, trading results)."""

    class DesiredState(models.TextChoices):
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"

    # The runtime's statuses, so the two lists cannot drift apart.
    Status = models.TextChoices(
        "Status",
        [
            (status.name, (status.value, STATUS_LABELS.get(status, status.value.capitalize())))
            for status in RuntimeStatus
        ],
        module=__name__,
        qualname="Engine.Status",
    )

    # Operator-owned.
    symbol = models.CharField(
        max_length=20, unique=True, validators=[validate_symbol], help_text="e.g. BTCUSDT"
    )
    desired_state = models.CharField(
        max_length=10, choices=DesiredState, default=DesiredState.RUNNING
    )
    cycle_interval = models.FloatField(
        null=True,
        blank=True,
        help_text="Seconds between trading cycles; empty uses the default (1 s).",
    )
    config = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            'Per-engine options, e.g. {"strategy": "breakout", "daily_loss_limit": 50, '
            '"on_stop": "close"} or {"crash_probability": 0.01, "seed": 7}. See the README.'
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # Runner-owned: written by the runner only, read-only everywhere else.
    status = models.CharField(max_length=10, choices=Status, default=Status.STOPPED)
    status_reason = models.TextField(blank=True, default="")
    status_changed_at = models.DateTimeField(
        null=True, blank=True, help_text="When the engine took its current status."
    )
    started_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Its last heartbeat written on its own; see beats_with_runner.",
    )
    beats_with_runner = models.BooleanField(
        default=False,
        help_text=(
            "It beats and gets prices in step with its runner's flushes: its heartbeat "
            "(and last tick) is the later of its stored one and its runner's beats_since "
            "(shown_heartbeat)."
        ),
    )
    error_count = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    position = models.FloatField(null=True, blank=True)
    daily_pnl = models.FloatField(default=0.0)
    total_pnl = models.FloatField(default=0.0)
    trade_count = models.PositiveIntegerField(default=0)
    # Where today's count starts, stored with the fills so a runner started again the same
    # UTC day counts daily PnL and the daily loss limit as the one before it did.
    pnl_day = models.DateField(
        null=True, blank=True, help_text="The UTC day the daily PnL and its base belong to."
    )
    day_start_pnl = models.FloatField(
        default=0.0, help_text="Total PnL when that day began: daily PnL is the change since."
    )
    loss_base = models.FloatField(
        default=0.0,
        help_text=(
            "Daily PnL when an operator last started or restarted the engine after a "
            "daily-loss halt that day: the limit counts from there."
        ),
    )
    restart_attempt = models.PositiveIntegerField(
        default=0, help_text="Attempt n of the current crash streak."
    )
    restart_budget_left = models.PositiveIntegerField(
        null=True, blank=True, help_text="Restarts left in the sliding one-hour window."
    )
    next_retry_at = models.DateTimeField(null=True, blank=True)
    failures_reset_at = models.DateTimeField(
        null=True, blank=True, help_text="An operator restart; earlier restarts no longer count."
    )
    updated_at = models.DateTimeField(auto_now=True, db_index=True)
    last_tick_at = models.DateTimeField(
        null=True, blank=True, help_text="When the engine last received a market price."
    )

    # The lease: which runner runs this engine. Written by runners only, in their own
    # transactions; every write of the engine's state is fenced by owner and epoch.
    lease_owner = models.CharField(
        max_length=100,
        blank=True,
        default="",
        db_index=True,
        help_text="The runner holding it (empty: none).",
    )
    lease_epoch = models.PositiveBigIntegerField(
        default=0, help_text="Bumped on every claim: a write of an older epoch changes nothing."
    )
    lease_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Renewed with its runner's heartbeat flush."
    )

    objects = EngineQuerySet.as_manager()

    class Meta:
        ordering = ["symbol"]
        permissions = [
            ("control_engine", "Can start, stop and restart engines"),
            ("trade_live", "Can set an engine's broker to live (real orders)"),
        ]

    def __str__(self) -> str:
        return self.symbol

    def clean_fields(self, exclude=None) -> None:
        try:
            super().clean_fields(exclude)
        except OverflowError as exc:  # Django's FloatField, given an int too large for a float
            message = f"cycle_interval must be a number greater than 0 and at most {MAX_CYCLE}"
            raise ValidationError({"cycle_interval": message}) from exc

    def clean(self) -> None:
        if symbol_problem(self.symbol):
            return  # the symbol field's validator reports it
        try:
            EngineConfig.from_options(self.symbol, self.cycle_interval, self.config).validate()
        except ConfigError as exc:
            field = "cycle_interval" if "cycle_interval" in str(exc) else "config"
            raise ValidationError({field: str(exc)}) from exc


class EngineRestart(models.Model):
    """A restart decided by the recovery policy: when, why, which attempt, how long a wait."""

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="restarts")
    at = models.DateTimeField(db_index=True)
    reason = models.TextField()
    attempt = models.PositiveIntegerField()
    backoff_seconds = models.FloatField()

    class Meta:
        ordering = ["-at"]
        get_latest_by = "at"

    def __str__(self) -> str:
        return f"{self.engine} restart {self.attempt} at {self.at:%Y-%m-%d %H:%M:%S}"


class EngineError(models.Model):
    """An error an engine raised, whether it survived it or crashed. Errors it survived are
    coalesced: one row per engine and error type per window, counting the repeats."""

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="errors")
    at = models.DateTimeField(db_index=True, help_text="The first time, in its window.")
    type = models.CharField(max_length=100)
    message = models.TextField()
    traceback = models.TextField(blank=True)
    fatal = models.BooleanField(default=False)
    crashed = models.BooleanField(default=False, help_text="The engine's task ended on it.")
    count = models.PositiveIntegerField(default=1, help_text="How many times, in its window.")
    last_at = models.DateTimeField(null=True, blank=True, help_text="The last time.")
    last_message = models.TextField(blank=True, default="", help_text="The last one's message.")

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.engine} {self.type} at {self.at:%Y-%m-%d %H:%M:%S}"


class EngineCommand(models.Model):
    """An operator's command: who asked what, when, and when the runner carried it out."""

    class Action(models.TextChoices):
        START = "start", "Start"
        STOP = "stop", "Stop"
        RESTART = "restart", "Restart"
        ADD = "add", "Add"
        REMOVE = "remove", "Remove"
        RESET_DAY = "reset_day", "Start a new trading day"
        CONFIGURE = "configure", "Configure"
        SET_BROKER = "set_broker", "Set the broker (paper, testnet, live)"
        KILL = "kill", "Kill switch: stop"
        KILL_CLOSE = "kill_close", "Kill switch: stop and close the position"

    class Outcome(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    engine = models.ForeignKey(
        Engine, on_delete=models.SET_NULL, null=True, blank=True, related_name="commands"
    )
    symbol = models.CharField(max_length=20, db_index=True)
    action = models.CharField(max_length=10, choices=Action)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    source = models.CharField(max_length=20, default="shell", help_text="admin, api, dashboard …")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    acked_at = models.DateTimeField(null=True, blank=True, db_index=True)
    outcome = models.CharField(max_length=10, choices=Outcome, default=Outcome.PENDING)
    message = models.TextField(blank=True, default="")
    acked_by = models.CharField(
        max_length=100, blank=True, default="", help_text="The runner that carried it out."
    )

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.action} {self.symbol} ({self.outcome})"


class EnginePnlSample(models.Model):
    """An engine's PnL at one moment, sampled by the runner for the detail page's chart."""

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="pnl_samples")
    at = models.DateTimeField(db_index=True)
    daily_pnl = models.FloatField()
    total_pnl = models.FloatField()

    class Meta:
        ordering = ["at"]

    def __str__(self) -> str:
        return f"{self.engine} PnL {self.total_pnl} at {self.at:%Y-%m-%d %H:%M:%S}"


class ApiToken(models.Model):
    """A key an API client uses to act as its user. Only a hash is stored: the key itself
    is shown once, when the token is created."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, help_text="What uses it, e.g. 'grafana' or 'deploy'.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_prefix = models.CharField(
        max_length=16, editable=False, help_text="The key's first characters, to recognise it."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"


class RunnerHeartbeatQuerySet(models.QuerySet):
    def live(self, since: datetime) -> RunnerHeartbeatQuerySet:
        """The runners live at ``since``: see ``RunnerHeartbeat.is_live``."""
        return self.filter(stopped_at=None, last_seen__gt=since)


class RunnerHeartbeat(models.Model):
    """A runner's own heartbeat, written in its flush transaction: a stale row means the
    runner stopped. It also carries the runner's cycle-duration histogram for /metrics."""

    name = models.CharField(
        max_length=100, unique=True, help_text="LEVIPANEL_RUNNER_NAME, or host:pid by default."
    )
    host = models.CharField(max_length=255, blank=True, default="")
    pid = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set when it stopped on a signal, having released its engines.",
    )
    engines = models.PositiveIntegerField(default=0, help_text="Engine tasks it hosts.")
    held = models.PositiveIntegerField(default=0, help_text="Engines whose lease it holds.")
    cycle_histogram = models.JSONField(
        default=dict,
        blank=True,
        help_text='Cumulative since start: {"buckets": [...], "counts": [...], "sum": s}.',
    )
    down_since = models.DateTimeField(
        null=True, blank=True, help_text="Set while a 'runner down' alert is open."
    )
    beats_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text=(
            "As of last_seen, every engine of this runner marked beats_with_runner "
            "heart-beat and got a price at or after this."
        ),
    )

    objects = RunnerHeartbeatQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def is_live(self, since: datetime) -> bool:
        """Seen after ``since`` (a lease ago: one silent for a whole lease has lost its
        leases), and not stopped on a signal. The one definition of a live runner."""
        return self.stopped_at is None and self.last_seen > since


class Alert(models.Model):
    """One alert: what happened, and how its delivery went. Also the rate limiter's memory."""

    class Kind(models.TextChoices):
        CRASHED = "crashed", "Engine crashed"
        RESTARTED = "restarted", "Engine running again after a restart"
        FAILED = "failed", "Engine failed"
        DAILY_LOSS = "daily_loss", "Engine stopped on its daily loss limit"
        RUNNER_DOWN = "runner_down", "Runner stopped heart-beating"
        RUNNER_UP = "runner_up", "Runner heart-beating again"
        INCIDENT = "incident", "Fleet-wide incident"
        INCIDENT_RESOLVED = "incident_resolved", "Fleet-wide incident resolved"
        SUMMARY = "summary", "Summary of rate-limited alerts"
        TAKEOVER = "takeover", "A runner took over engines of a runner that went silent"
        KILL_SWITCH = "kill_switch", "Kill switch pulled: live engines stopped"

    class Outcome(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Delivery failed"
        SUPPRESSED = "suppressed", "Rate-limited (waiting for its summary)"
        SUMMARIZED = "summarized", "Folded into a summary"
        IN_INCIDENT = "in_incident", "Folded into an incident"
        DISABLED = "disabled", "No channel configured"

    key = models.CharField(max_length=120, db_index=True, help_text="Symbol, runner:NAME, fleet")
    kind = models.CharField(max_length=20, choices=Kind)
    text = models.TextField()
    created_at = models.DateTimeField(db_index=True)
    outcome = models.CharField(max_length=12, choices=Outcome, default=Outcome.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    deliveries = models.JSONField(default=dict, blank=True, help_text="Channel → result.")
    error = models.TextField(blank=True, default="")
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.key} ({self.outcome})"


class Incident(models.Model):
    """Many engines crashing together: one alert names them all, one says it is over."""

    opened_at = models.DateTimeField(db_index=True)
    symbols = models.JSONField(default=list)
    resolved_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-opened_at"]

    def __str__(self) -> str:
        state = "resolved" if self.resolved_at else "open"
        return f"incident {self.opened_at:%Y-%m-%d %H:%M:%S} ({len(self.symbols)} engines, {state})"


class PrunedRestarts(models.Model):
    """Restarts removed by retention, so the Prometheus restart counter never goes down."""

    engine = models.OneToOneField(Engine, on_delete=models.CASCADE, primary_key=True)
    count = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.engine}: {self.count} pruned restarts"


class Trade(models.Model):
    """One paper fill, stored in the transaction that changes the engine's position. The
    book after the fill rides along, so a restart reads one row per engine."""

    class Side(models.TextChoices):
        BUY = "buy", "Buy"
        SELL = "sell", "Sell"

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="trades")
    symbol = models.CharField(max_length=20)
    fill_id = models.CharField(
        max_length=32,
        unique=True,
        help_text="Made by the engine: a retried write never doubles it.",
    )
    seq = models.PositiveIntegerField(help_text="The engine's n-th fill.")
    side = models.CharField(max_length=4, choices=Side)
    qty = models.FloatField()
    price = models.FloatField(help_text="Fill price, slippage included.")
    fee = models.FloatField()
    time = models.DateTimeField(db_index=True)
    realized_pnl = models.FloatField(
        null=True, blank=True, help_text="PnL this fill realized (before fees); empty if it opened."
    )
    position_after = models.FloatField()
    avg_price_after = models.FloatField()
    realized_total = models.FloatField(help_text="Realized PnL of all fills so far.")
    fees_total = models.FloatField(help_text="Fees of all fills so far.")
    runner = models.CharField(
        max_length=100, blank=True, default="", help_text="The runner that made the fill."
    )
    epoch = models.PositiveBigIntegerField(
        default=0, help_text="The lease epoch under which the fill was made."
    )

    class Meta:
        ordering = ["-time", "-seq"]
        constraints = [
            models.UniqueConstraint(fields=["engine", "seq"], name="trade_engine_seq_unique")
        ]
        indexes = [models.Index(fields=["engine", "-seq"], name="trade_engine_seq_desc")]

    def __str__(self) -> str:
        return f"{self.symbol} {self.side} {self.qty:g} @ {self.price:g}"


class Backtest(models.Model):
    """A strategy config run over candles by the live engine's code, and what it made."""

    engine = models.ForeignKey(
        Engine,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="backtests",
        help_text="The engine whose config it tried, if any.",
    )
    symbol = models.CharField(max_length=20)
    strategy = models.CharField(max_length=200)
    params = models.JSONField(default=dict, blank=True)
    config = models.JSONField(default=dict, blank=True, help_text="The whole config it ran.")
    source = models.CharField(max_length=300, help_text="The candle file.")
    interval = models.CharField(max_length=8, help_text="The candles the strategy saw.")
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    candles = models.PositiveIntegerField()
    seconds = models.FloatField(help_text="The run over the candles, without loading them.")
    metrics = models.JSONField(default=dict, blank=True)
    trades = models.JSONField(
        default=list,
        blank=True,
        help_text="[time, side, qty, price, fee, realized PnL, position after] per fill.",
    )
    equity = models.JSONField(
        default=list, blank=True, help_text="[time, total PnL] at candle closes, for the chart."
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.symbol} {self.strategy} backtest {self.pk}"


class ExchangeAccount(models.Model):
    """An exchange account testnet and live engines trade on. Its keys are stored encrypted
    (``vault``: Fernet, the key from the environment) and never shown again: not in a
    log, a page or the API."""

    name = models.SlugField(max_length=50, unique=True, help_text="What engines call it.")
    exchange = models.CharField(max_length=40, help_text="The ccxt exchange id, e.g. binance.")
    testnet = models.BooleanField(
        default=True, help_text="A testnet (sandbox) account; unticked: a live one."
    )
    api_key_encrypted = models.TextField(editable=False)
    secret_encrypted = models.TextField(editable=False)
    password_encrypted = models.TextField(blank=True, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.exchange} {'testnet' if self.testnet else 'live'})"


class KillSwitch(models.Model):
    """One pull of the kill switch: who, when, from where, which engines it stopped and
    whether it closed their positions."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    source = models.CharField(max_length=20, default="shell")
    close_positions = models.BooleanField(default=False)
    symbols = models.JSONField(default=list, help_text="The engines it stopped.")

    class Meta:
        ordering = ["-at"]
        verbose_name = "kill switch pull"

    def __str__(self) -> str:
        return f"kill switch {self.at:%Y-%m-%d %H:%M:%S} ({len(self.symbols)} engines)"
