"""The operator's pages: the live dashboard and one engine's history."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from ..models import CONTROL_PERMISSION, Backtest, Engine
from ..runtime.engine import symbol_problem
from ..selectors import dashboard
from ..selectors.engines import STATUSES, runners_seen
from ..services.exchanges import kill_switch

HISTORY_ROWS = 50


@require_GET
@login_required(login_url="login")
def dashboard_page(request: HttpRequest) -> HttpResponse:
    """The page renders from a snapshot at once; the websocket keeps it current."""
    context = {
        "snapshot": {"seq": 0, **dashboard.snapshot()},
        "can_control": request.user.has_perm(CONTROL_PERMISSION),
        "statuses": STATUSES,
    }
    return render(request, "engines_app/dashboard.html", context)


@require_GET
@login_required(login_url="login")
def engine_page(request: HttpRequest, symbol: str) -> HttpResponse:
    if symbol_problem(symbol):
        raise Http404("no such engine")
    seen = runners_seen()  # before the engine: see ``runners_seen``
    engine = get_object_or_404(Engine.objects.with_heartbeat(), symbol=symbol)
    context = {
        "engine": engine,
        "row": dashboard.engine_row(engine, time.time(), seen),
        "restarts": engine.restarts.all()[:HISTORY_ROWS],
        "errors": engine.errors.all()[:HISTORY_ROWS],
        "commands": engine.commands.all()[:HISTORY_ROWS],
        "log_lines": dashboard.log_tail(symbol),
        "chart": dashboard.pnl_chart(engine),
        "feed": dashboard.feed_label(engine.config),
        "can_control": request.user.has_perm(CONTROL_PERMISSION),
    }
    return render(request, "engines_app/engine.html", context)


TRADES_SHOWN = 500


@require_GET
@login_required(login_url="login")
def backtest_page(request: HttpRequest, pk: int) -> HttpResponse:
    """One stored backtest: its report beside buy-and-hold, its equity curve, its trades."""
    backtest = get_object_or_404(Backtest, pk=pk)
    metrics = backtest.metrics
    hold = metrics.get("buy_and_hold", {})
    first = backtest.equity[0][0] if backtest.equity else None
    chart = {
        "series": [
            {"label": "strategy", "points": backtest.equity},
            {"label": "buy and hold", "points": metrics.get("buy_and_hold_curve", [])},
        ],
        "unit": "",
    }
    if first is None:
        chart["series"] = chart["series"][:1]
    context = {
        "backtest": backtest,
        "m": metrics,
        "hold": hold,
        "chart": chart,
        "trades": [[_utc(row[0]), *row[1:]] for row in backtest.trades[:TRADES_SHOWN]],
        "trades_total": len(backtest.trades),
        "daily": [(_utc(day), pnl) for day, pnl in metrics.get("daily_pnl", [])],
    }
    return render(request, "engines_app/backtest.html", context)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@require_POST
@login_required(login_url="login")
def kill_switch_page(request: HttpRequest) -> HttpResponse:
    """The dashboard's kill switch (confirmed on the page): stop every exchange engine."""
    if not request.user.has_perm(CONTROL_PERMISSION):
        raise PermissionDenied("you do not have permission to control engines")
    close = request.POST.get("close_positions") == "on"
    pulled = kill_switch(close_positions=close, user=request.user, source="dashboard")
    messages.warning(request, f"Kill switch pulled: {len(pulled.symbols)} engines stopping.")
    return redirect("dashboard")
