"""Writes about real exchanges: accounts (keys encrypted), an engine's broker, and the
kill switch. The switches are checked here, so the admin, the API and the shell obey the
same ones:

1. live trading is off for the installation unless ``LEVIPANEL_LIVE_TRADING=1``;
2. only a user with ``engines_app.trade_live`` sets an engine's broker to live, or changes
   the broker or account of a live engine; the change is a recorded command;
3. a refused change raises ``LiveTradingRefused`` with the reason and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .. import vault
from ..models import LIVE_PERMISSION, Alert, Engine, EngineCommand, ExchangeAccount, KillSwitch
from ..runtime.brokers import BROKERS, LIVE, LIVE_OFF, PAPER, live_trading_enabled
from ..runtime.exchanges import exchange_problem
from ..selectors.exchanges import broker_of, exchange_engines
from .engines import EngineNotFound, _command, _user

log = logging.getLogger("levipanel.services")

Action = EngineCommand.Action


class LiveTradingRefused(PermissionError):
    """A change toward live orders that the switches do not allow."""


def check_broker_change(old: object, new: object, user) -> bool:
    """Refuse (LiveTradingRefused) a change that makes an engine live, or changes a live
    engine's broker or account, unless the installation allows live trading and ``user``
    holds the permission. True when the broker or account changes at all."""
    before, after = broker_of(old), broker_of(new)
    if before == after:
        return False
    if LIVE in (before[0], after[0]):
        if after[0] == LIVE and not live_trading_enabled():
            raise LiveTradingRefused(LIVE_OFF)
        if _user(user) is None or not user.has_perm(LIVE_PERMISSION):
            raise LiveTradingRefused(
                f"setting or changing a live broker needs the permission {LIVE_PERMISSION}"
            )
    return True


@transaction.atomic
def engine_set_broker(
    *, symbol: str, broker: str, account: str = "", user=None, source: str = "shell"
) -> EngineCommand | None:
    """Set an engine's broker (paper, testnet or live) and account, checked by the
    switches and validated like any config; recorded as a ``set_broker`` command. None
    when nothing changes."""
    if broker not in BROKERS:
        raise ValidationError({"config": f"broker must be one of: {', '.join(BROKERS)}"})
    try:
        engine = Engine.objects.select_for_update().get(symbol=symbol)
    except Engine.DoesNotExist:
        raise EngineNotFound(symbol) from None
    config = dict(engine.config) if isinstance(engine.config, Mapping) else {}
    options = dict(config.get("broker_options") or {})
    if broker == PAPER:
        config.pop("broker", None)
        options.pop("account", None)
    else:
        config["broker"] = broker
        options["account"] = account
    if options:
        config["broker_options"] = options
    else:
        config.pop("broker_options", None)
    if not check_broker_change(engine.config, config, user):
        return None
    if account and not ExchangeAccount.objects.filter(name=account).exists():
        raise ValidationError({"config": f"no exchange account named {account!r}"})
    engine.config = config
    engine.full_clean()
    engine.save(update_fields=["config", "updated_at"])
    return _command(engine, symbol, Action.SET_BROKER, user, source)


@transaction.atomic
def account_save(
    *,
    name: str,
    exchange: str,
    testnet: bool = True,
    api_key: str = "",
    secret: str = "",
    password: str = "",
) -> ExchangeAccount:
    """Create an exchange account, or update one; empty keys of an existing account keep
    the stored ones. The keys are encrypted before they reach the database."""
    if problem := exchange_problem(exchange):
        raise ValidationError({"exchange": problem})
    account = ExchangeAccount.objects.select_for_update().filter(name=name).first()
    if account is None:
        if not api_key or not secret:
            raise ValidationError({"api_key": "a new account needs its API key and secret"})
        account = ExchangeAccount(name=name)
    if (
        account.pk
        and account.testnet != testnet
        and Engine.objects.filter(config__broker_options__account=name).exists()
    ):
        raise ValidationError(
            {"testnet": "engines use this account: move them off it before changing its kind"}
        )
    account.exchange, account.testnet = exchange, testnet
    for field, value in (("api_key", api_key), ("secret", secret), ("password", password)):
        if value:
            setattr(account, f"{field}_encrypted", vault.encrypt(value))
    account.full_clean()
    account.save()
    return account


def kill_switch(*, close_positions: bool = False, user=None, source: str = "shell") -> KillSwitch:
    """Stop every engine that trades on an exchange (live and testnet) now: desired
    stopped, and a ``kill`` (or ``kill_close``: its position closed at market) command
    each; recorded, and alerted to every channel."""
    from ..alerts.rules import FLEET, raise_alert

    action = Action.KILL_CLOSE if close_positions else Action.KILL
    with transaction.atomic():
        symbols = [symbol for symbol, _ in exchange_engines()]
        engines = list(Engine.objects.select_for_update().filter(symbol__in=symbols))
        Engine.objects.filter(id__in=[e.id for e in engines]).update(
            desired_state=Engine.DesiredState.STOPPED, updated_at=timezone.now()
        )
        for engine in engines:
            _command(engine, engine.symbol, action, user, source)
        pulled = KillSwitch.objects.create(
            user=_user(user),
            source=source,
            close_positions=close_positions,
            symbols=sorted(e.symbol for e in engines),
        )
    who = getattr(_user(user), "username", "") or source
    closing = " and closing their positions" if close_positions else ""
    names = ", ".join(pulled.symbols) or "none running on an exchange"
    text = f"KILL SWITCH pulled by {who}: stopping {len(engines)} engines{closing}: {names}"
    log.warning(text)
    raise_alert(FLEET, Alert.Kind.KILL_SWITCH, text, now=timezone.now())
    return pulled
