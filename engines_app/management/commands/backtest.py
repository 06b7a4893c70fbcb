"""python manage.py backtest SYMBOL --strategy … --params '{…}' --csv FILE [--from --to]"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from engines_app.services.backtests import backtest_run


def _day(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a date like 2025-01-31 or 2025-01-31T12:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _json(value: str, what: str) -> dict:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise CommandError(f"{what} is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise CommandError(f"{what} must be a JSON object")
    return parsed


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def report_lines(row) -> list[str]:
    """The report of a stored (or unsaved) backtest, beside buy-and-hold."""
    m, hold = row.metrics, row.metrics["buy_and_hold"]
    win = "-" if m["win_rate"] is None else f"{m['win_rate'] * 100:.1f} %"
    sharpe = "-" if m["sharpe"] is None else f"{m['sharpe']:.2f}"
    days = m["daily_pnl"]
    trades = f"{m['trades']} ({m['round_trips']})"
    best = max(days, key=lambda d: d[1]) if days else None
    worst = min(days, key=lambda d: d[1]) if days else None
    lines = [
        f"{row.symbol} {row.strategy} {json.dumps(row.params)} on {row.interval} candles",
        f"{row.candles} candles {row.first_at:%Y-%m-%d %H:%M} .. {row.last_at:%Y-%m-%d %H:%M} "
        f"UTC from {row.source}, run in {row.seconds:.2f} s",
        "",
        f"{'':22}{'strategy':>16}{'buy and hold':>16}",
        f"{'total PnL':22}{_money(m['total_pnl']):>16}{_money(hold['total_pnl']):>16}",
        f"{'return on capital':22}{m['return_pct']:>15.2f}%{hold['return_pct']:>15.2f}%",
        f"{'max drawdown':22}{_money(m['max_drawdown']):>16}{_money(hold['max_drawdown']):>16}",
        f"{'fees':22}{_money(m['fees']):>16}{_money(hold['fees']):>16}",
        f"{'trades (round trips)':22}{trades:>16}{'1':>16}",
        f"{'win rate':22}{win:>16}",
        f"{'Sharpe (daily, 365)':22}{sharpe:>16}",
        f"{'exposure':22}{m['exposure'] * 100:>15.1f}%{100:>15.1f}%",
        f"{'days':22}{len(days):>16}",
    ]
    if best and worst:
        lines.append(
            f"{'best / worst day':22}{_money(best[1]):>16}{_money(worst[1]):>16}"
            f"  ({datetime.fromtimestamp(best[0], UTC):%Y-%m-%d} / "
            f"{datetime.fromtimestamp(worst[0], UTC):%Y-%m-%d})"
        )
    lines.append(f"{'capital (1 order)':22}{_money(m['capital']):>16}")
    if m.get("halts"):
        lines.append(f"{'daily loss halts':22}{m['halts']:>16}")
    return lines


class Command(BaseCommand):
    help = (
        "Run a strategy over a candle file with the live engine's strategy, risk and paper "
        "broker code; print the report beside buy-and-hold and store it (a Backtest row)."
    )

    def add_arguments(self, parser):
        parser.add_argument("symbol", help="e.g. BTCUSDT")
        parser.add_argument("--strategy", default=None, help="sma_cross, or module:Class")
        parser.add_argument("--params", default=None, help="the strategy's parameters, JSON")
        parser.add_argument(
            "--csv",
            required=True,
            help="candle file: a shipped one by name, or a path (.csv or .csv.gz)",
        )
        parser.add_argument("--from", dest="start", type=_day, help="first day (UTC)")
        parser.add_argument("--to", dest="end", type=_day, help="up to, not including (UTC)")
        parser.add_argument(
            "--config", default="{}", help="more engine config, JSON (fees, limits, …)"
        )
        parser.add_argument("--interval", help="candle interval the strategy sees (5m, 1h …)")
        parser.add_argument("--no-save", action="store_true", help="print only, store nothing")

    def handle(self, *args, symbol, strategy, params, csv, start, end, config, interval, **opts):
        config = _json(config, "--config")
        if strategy is not None:
            config["strategy"] = strategy
        if params is not None:
            config["params"] = _json(params, "--params")
        if interval is not None:
            config["candle_interval"] = interval
        try:
            row = backtest_run(
                symbol=symbol,
                config=config,
                source=csv,
                start=start,
                end=end,
                save=not opts["no_save"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write("\n".join(report_lines(row)))
        if row.pk:
            self.stdout.write(f"\nStored as backtest {row.pk}.")
