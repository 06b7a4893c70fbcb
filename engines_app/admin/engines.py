"""The admin: watch the engines and steer them. Every start, stop, restart, add, remove and
settings change goes through ``services`` so it is recorded as a command the runner carries
out; the fields the runner owns are read-only here and never written back."""

from __future__ import annotations

import time
from collections.abc import Callable

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from ..api.tokens import api_token_create
from ..models import (
    CONTROL_PERMISSION,
    ApiToken,
    Engine,
    EngineCommand,
    EngineError,
    EngineRestart,
    RunnerHeartbeat,
)
from ..runtime.feeds.replay import csv_files
from ..selectors.engines import STATUSES, lease_live, shown_status, with_shown_status
from ..selectors.exchanges import broker_summary
from ..services.backtests import backtest_run
from ..services.engines import (
    EngineNotFound,
    engine_add,
    engine_configure,
    engine_remove,
    engine_restart,
    engine_start,
    engine_stop,
)
from ..services.exchanges import LiveTradingRefused, check_broker_change
from .base import ReadOnlyAdmin

SETTINGS_FIELDS = ("cycle_interval", "config")
RUNNER_FIELDS = (
    "shown_status",
    "runner",
    "lease_owner",
    "lease_epoch",
    "lease_expires_at",
    "status_reason",
    "started_at",
    "heartbeat",
    "heartbeat_age",
    "uptime",
    "error_count",
    "last_error",
    "position",
    "daily_pnl",
    "total_pnl",
    "trade_count",
    "restart_attempt",
    "restart_budget_left",
    "next_retry_at",
    "failures_reset_at",
    "updated_at",
    "created_at",
)
# Not HALTED: its daily loss limit stopped it on purpose; an operator resumes it one by one.
NEEDS_RESTART = (
    Engine.Status.CRASHED,
    Engine.Status.BACKOFF,
    Engine.Status.FAILED,
)
RECENT = 10


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    value = int(value)
    if value < 60:
        return f"{value} s"
    if value < 3600:
        return f"{value // 60} min {value % 60} s"
    return f"{value // 3600} h {value % 3600 // 60} min"


def _symbols(engines) -> str:
    names = [engine.symbol for engine in engines]
    shown = ", ".join(names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")


class StatusFilter(admin.SimpleListFilter):
    """By the status the list shows: ``unknown`` for an engine no live runner holds."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin):
        labels = dict(Engine.Status.choices)
        return [(status, labels.get(status, status.capitalize())) for status in STATUSES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Engine]):
        if self.value() in STATUSES:
            return queryset.filter(with_shown_status(self.value()))
        return queryset


class LogInline(admin.TabularInline):
    """The newest few rows of a log the runner or the services write; read-only."""

    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class RestartInline(LogInline):
    model = EngineRestart
    fields = readonly_fields = ("at", "attempt", "backoff_seconds", "reason")
    verbose_name_plural = f"Recent restarts (newest {RECENT})"


class ErrorInline(LogInline):
    model = EngineError
    fields = readonly_fields = ("at", "type", "message", "count", "last_at", "fatal", "crashed")
    verbose_name_plural = f"Recent errors (newest {RECENT})"


class CommandInline(LogInline):
    model = EngineCommand
    fk_name = "engine"
    fields = readonly_fields = (
        "created_at",
        "action",
        "user",
        "source",
        "acked_at",
        "outcome",
        "message",
    )
    verbose_name_plural = f"Recent commands (newest {RECENT})"


class ConfigField(forms.JSONField):
    """Django's JSON field, also refusing what the parser gives up on with another error than
    a syntax error (nesting too deep, an int of over 4,300 digits) instead of failing."""

    def to_python(self, value):
        try:
            return super().to_python(value)
        except (ValueError, RecursionError) as exc:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from exc

    def bound_data(self, data, initial):
        try:
            return super().bound_data(data, initial)
        except (ValueError, RecursionError):
            return forms.fields.InvalidJSONInput(data)


class EngineForm(forms.ModelForm):
    class Meta:
        model = Engine
        fields = ("symbol", "desired_state", "cycle_interval", "config")
        field_classes = {"config": ConfigField}

    user = None  # the operator, set by the admin: the live-trading switches need them

    def clean_cycle_interval(self) -> float | None:
        value = self.cleaned_data.get("cycle_interval")
        if value is not None and value <= 0:
            raise forms.ValidationError("Must be greater than 0 seconds.")
        return value

    def clean_config(self):
        """A broker change obeys the switches (docs/exchanges.md); refused: said here."""
        value = self.cleaned_data.get("config")
        before = self.instance.config if self.instance.pk else {}
        try:
            check_broker_change(before, value, self.user)
        except LiveTradingRefused as exc:
            raise forms.ValidationError(str(exc)) from None
        return value


BACKTEST_PERMISSION = "engines_app.add_backtest"


class BacktestForm(forms.Form):
    """An engine's config over one of the shipped candle files (never a path from a form)."""

    source = forms.ChoiceField(label="Candles", help_text="Synthetic candle files shipped.")
    start = forms.DateTimeField(label="From (UTC)", required=False)
    end = forms.DateTimeField(label="To (UTC, not included)", required=False)
    config = ConfigField(help_text="The engine's config; change it here to try another.")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["source"].choices = [(name, name) for name in csv_files()]


@admin.register(Engine)
class EngineAdmin(admin.ModelAdmin):
    form = EngineForm
    change_form_template = "admin/engines_app/engine/change_form.html"
    list_display = (
        "symbol",
        "shown_status",
        "runner",
        "desired_state",
        "heartbeat_age",
        "uptime",
        "position",
        "daily_pnl",
        "total_pnl",
        "trade_count",
        "error_count",
        "broker",
    )
    list_filter = (StatusFilter, "desired_state")
    search_fields = ("symbol",)
    actions = ("start_engines", "stop_engines", "restart_engines")
    inlines = (RestartInline, ErrorInline, CommandInline)
    change_list_template = "admin/engines_app/engine/change_list.html"

    # Permissions ------------------------------------------------------------------------

    def has_control_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(CONTROL_PERMISSION)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Adding an engine starts it: that is controlling engines.
        return super().has_add_permission(request) and self.has_control_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and self.has_control_permission(request)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Engine]:
        runner = RunnerHeartbeat.objects.filter(name=OuterRef("lease_owner"))
        last_seen = Subquery(runner.values("last_seen")[:1])
        engines = super().get_queryset(request).with_heartbeat()
        return engines.annotate(runner_last_seen=last_seen)

    # Forms ------------------------------------------------------------------------------

    def get_form(self, request: HttpRequest, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        return type(form.__name__, (form,), {"user": request.user})

    def get_fieldsets(self, request: HttpRequest, obj=None):
        operator = (None, {"fields": ("symbol", "desired_state", *SETTINGS_FIELDS)})
        if obj is None:
            return [operator]
        return [operator, ("Reported by the runner", {"fields": RUNNER_FIELDS})]

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        fields = list(RUNNER_FIELDS)
        if obj is not None:
            fields.append("symbol")  # the runner knows an engine by its symbol
            if not self.has_control_permission(request):
                # A settings change restarts the engine: that is controlling it too.
                fields.extend(("desired_state", *SETTINGS_FIELDS))
        return fields

    def get_inline_instances(self, request: HttpRequest, obj=None):
        # The logs are for reading; on a save they would only be validated against rows
        # the runner may have added since the form was shown.
        if obj is None or request.method == "POST":
            return []
        return super().get_inline_instances(request, obj)

    def get_formset_kwargs(self, request, obj, inline, prefix):
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        model = inline.model
        newest = model.objects.filter(engine=obj).order_by("-pk").values_list("pk", flat=True)
        kwargs["queryset"] = kwargs["queryset"].filter(pk__in=list(newest[:RECENT]))
        return kwargs

    def save_model(self, request: HttpRequest, obj: Engine, form, change: bool) -> None:
        if not change:
            command = engine_add(
                symbol=obj.symbol,
                user=request.user,
                source="admin",
                cycle_interval=obj.cycle_interval,
                config=obj.config,
                desired_state=obj.desired_state,
            )
            obj.pk = command.engine_id
            obj.refresh_from_db()
            obj._state.adding = False
            wanted = "the runner starts it" if obj.desired_state == "running" else "stopped"
            self.message_user(request, f"Engine {obj.symbol} added ({wanted}).")
            return
        changed = [name for name in SETTINGS_FIELDS if name in form.changed_data]
        edit = {name: getattr(obj, name) for name in changed}
        if edit and engine_configure(symbol=obj.symbol, user=request.user, source="admin", **edit):
            self.message_user(
                request,
                f"Engine {obj.symbol}: {', '.join(changed)} changed; the runner restarts it "
                "with the new settings if it is running.",
            )
        if "desired_state" in form.changed_data and self.has_control_permission(request):
            service = engine_start if obj.desired_state == "running" else engine_stop
            service(symbol=obj.symbol, user=request.user, source="admin")
            self.message_user(request, f"Engine {obj.symbol}: {service.__name__[7:]} requested.")

    def delete_model(self, request: HttpRequest, obj: Engine) -> None:
        engine_remove(symbol=obj.symbol, user=request.user, source="admin")

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Engine]) -> None:
        for engine in queryset:
            engine_remove(symbol=engine.symbol, user=request.user, source="admin")

    # Columns ----------------------------------------------------------------------------

    @admin.display(description="broker")
    def broker(self, engine: Engine) -> str:
        shown = broker_summary(engine.config)
        mode = shown["broker"]
        text = f"{mode} {shown['exchange']}".strip()
        return format_html('<span class="broker {}">{}</span>', mode, text)

    @admin.display(description="status", ordering="status")
    def shown_status(self, engine: Engine) -> str:
        status = shown_status(
            engine.status, engine.lease_owner, engine.lease_expires_at, time.time()
        )
        return dict(Engine.Status.choices).get(status, status.capitalize())

    @admin.display(description="runner", ordering="lease_owner")
    def runner(self, engine: Engine) -> str:
        if lease_live(engine.lease_owner, engine.lease_expires_at, time.time()):
            return engine.lease_owner
        if not engine.lease_owner:
            return "-"
        seen = getattr(engine, "runner_last_seen", None)
        ago = f", last seen {_seconds(time.time() - seen.timestamp())} ago" if seen else ""
        return f"none (was {engine.lease_owner}{ago})"

    @admin.display(description="last heartbeat")
    def heartbeat(self, engine: Engine) -> str:
        """Its own, or its runner's flush while it beats in step (``heartbeat_expression``)."""
        beat = getattr(engine, "heartbeat", None)
        return "-" if beat is None else formats.localize(timezone.localtime(beat))

    @admin.display(description="heartbeat age")
    def heartbeat_age(self, engine: Engine) -> str:
        beat = getattr(engine, "heartbeat", None)
        if beat is None:
            return "-"
        return _seconds(time.time() - beat.timestamp())

    @admin.display(description="uptime")
    def uptime(self, engine: Engine) -> str:
        if engine.status not in (Engine.Status.RUNNING, Engine.Status.DEGRADED):
            return "-"
        if engine.started_at is None:
            return "-"
        return _seconds(time.time() - engine.started_at.timestamp())

    # Actions ----------------------------------------------------------------------------

    def _steer(self, request: HttpRequest, engines, service: Callable, verb: str) -> None:
        done, gone = [], []
        for engine in engines:
            try:
                service(symbol=engine.symbol, user=request.user, source="admin")
                done.append(engine)
            except EngineNotFound:  # deleted since the page was drawn
                gone.append(engine)
        if done:
            self.message_user(
                request,
                f"{verb} requested for {len(done)} engine(s): {_symbols(done)}. "
                "The runner carries it out within a second.",
            )
        if gone:
            self.message_user(
                request, f"No longer there, nothing done: {_symbols(gone)}.", messages.WARNING
            )

    @admin.action(description="Start selected engines", permissions=["control"])
    def start_engines(self, request: HttpRequest, queryset: QuerySet[Engine]) -> None:
        self._steer(request, queryset, engine_start, "Start")

    @admin.action(description="Stop selected engines", permissions=["control"])
    def stop_engines(self, request: HttpRequest, queryset: QuerySet[Engine]) -> None:
        self._steer(request, queryset, engine_stop, "Stop")

    @admin.action(description="Restart selected engines", permissions=["control"])
    def restart_engines(self, request: HttpRequest, queryset: QuerySet[Engine]) -> None:
        self._steer(request, queryset, engine_restart, "Restart")

    def get_urls(self):
        view = self.admin_site.admin_view(require_POST(self.restart_crashed_view))
        name = "engines_app_engine_restart_crashed"
        backtest = self.admin_site.admin_view(self.backtest_view)
        return [
            path("restart-crashed/", view, name=name),
            path("<path:object_id>/backtest/", backtest, name="engines_app_engine_backtest"),
            *super().get_urls(),
        ]

    def backtest_view(self, request: HttpRequest, object_id: str):
        """Backtest this engine's config (or an edit of it) over a shipped candle file; on
        success, the backtest's page."""
        if not request.user.has_perm(BACKTEST_PERMISSION):
            raise PermissionDenied
        engine = self.get_object(request, object_id)
        if engine is None:
            raise Http404("no such engine")
        default = next((n for n in csv_files() if engine.symbol.lower() in n), "")
        initial = {"config": engine.config, "source": default or "sample_btcusdt_1m.csv"}
        form = BacktestForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                row = backtest_run(
                    symbol=engine.symbol,
                    config=data["config"],
                    source=data["source"],
                    start=data["start"],
                    end=data["end"],
                    shipped_only=True,
                    engine=engine,
                    user=request.user,
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                self.message_user(request, f"Backtest {row.pk} of {engine.symbol} stored.")
                return HttpResponseRedirect(reverse("backtest", args=[row.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": engine,
            "title": f"Backtest {engine.symbol}'s config",
            "form": form,
        }
        return TemplateResponse(request, "admin/engines_app/engine/backtest.html", context)

    def change_view(self, request: HttpRequest, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_backtest": request.user.has_perm(BACKTEST_PERMISSION),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def restart_crashed_view(self, request: HttpRequest) -> HttpResponseRedirect:
        """One click: restart every crashed, waiting (backoff) or failed engine."""
        if not self.has_control_permission(request):
            raise PermissionDenied
        engines = Engine.objects.filter(status__in=NEEDS_RESTART)
        if engines:
            self._steer(request, engines, engine_restart, "Restart")
        else:
            self.message_user(request, "No crashed or failed engines.", messages.INFO)
        return HttpResponseRedirect(reverse("admin:engines_app_engine_changelist"))

    def changelist_view(self, request: HttpRequest, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_control": self.has_control_permission(request),
            "needs_restart": Engine.objects.filter(status__in=NEEDS_RESTART).count(),
        }
        return super().changelist_view(request, extra_context)


@admin.register(EngineRestart)
class EngineRestartAdmin(ReadOnlyAdmin):
    list_display = ("engine", "at", "attempt", "backoff_seconds", "reason")
    list_filter = ("engine",)
    search_fields = ("engine__symbol", "reason")
    date_hierarchy = "at"


@admin.register(EngineError)
class EngineErrorAdmin(ReadOnlyAdmin):
    list_display = ("engine", "at", "type", "message", "count", "last_at", "fatal", "crashed")
    list_filter = ("fatal", "crashed", "type")
    search_fields = ("engine__symbol", "message")
    date_hierarchy = "at"


@admin.register(EngineCommand)
class EngineCommandAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "symbol",
        "action",
        "user",
        "source",
        "created_at",
        "acked_at",
        "outcome",
        "message",
    )
    list_filter = ("action", "outcome", "source")
    search_fields = ("symbol",)
    date_hierarchy = "created_at"


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("name", "user")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Create a token (its key is shown once), see when it was used, delete to revoke."""

    form = ApiTokenForm
    list_display = ("name", "user", "key_prefix", "created_at", "last_used_at")
    readonly_fields = ("key_prefix", "created_at", "last_used_at")
    search_fields = ("name", "user__username")

    def get_queryset(self, request: HttpRequest):
        tokens = super().get_queryset(request).select_related("user")
        return tokens if request.user.is_superuser else tokens.filter(user=request.user)

    def get_fields(self, request: HttpRequest, obj=None):
        # Only a superuser may mint a key that acts as someone else.
        fields = ["name", "user"] if request.user.is_superuser else ["name"]
        return fields if obj is None else [*fields, *self.readonly_fields]

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # a key cannot be edited; delete it and create another

    def save_model(self, request: HttpRequest, obj: ApiToken, form, change: bool) -> None:
        user = obj.user if request.user.is_superuser and obj.user_id else request.user
        token, key = api_token_create(user=user, name=obj.name)
        obj.pk, obj.user, obj.key_prefix = token.pk, token.user, token.key_prefix
        obj._state.adding = False
        obj.new_key = key  # for response_add only: never stored, logged or put in a message

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue=None):
        """Show the new key on this response, once: not in a message, which would carry it
        in the signed (not encrypted) ``messages`` cookie."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API token created",
            "token": obj,
            "key": obj.new_key,
        }
        response = TemplateResponse(request, "admin/engines_app/apitoken/created.html", context)
        add_never_cache_headers(response)
        return response
