"""Exchange accounts, brokers and the kill switch from the shell (docs/exchanges.md)."""

from __future__ import annotations

import getpass
import os

from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from ...services import LiveTradingRefused, account_save, engine_set_broker, kill_switch
from ...vault import VaultError

KEY_ENV, SECRET_ENV, PASSWORD_ENV = (
    "LEVIPANEL_API_KEY",
    "LEVIPANEL_API_SECRET",
    "LEVIPANEL_API_PASSWORD",
)


class Command(BaseCommand):
    help = "Exchange accounts (keys encrypted), engine brokers, and the kill switch."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="what", required=True)
        sub.add_parser("fernetkey", help="Print a new key for LEVIPANEL_FERNET_KEYS.")
        account = sub.add_parser(
            "account",
            help=f"Create or update an account; keys from {KEY_ENV} and {SECRET_ENV} "
            "(asked for when unset), never from the command line.",
        )
        account.add_argument("name")
        account.add_argument("--exchange", required=True, help="A ccxt exchange id: binance")
        account.add_argument("--live", action="store_true", help="A live account (not testnet)")
        broker = sub.add_parser("broker", help="Set an engine's broker: paper, testnet, live.")
        broker.add_argument("symbol")
        broker.add_argument("mode", choices=["paper", "testnet", "live"])
        broker.add_argument("--account", default="")
        broker.add_argument("--user", required=True, help="Who sets it (their permissions)")
        kill = sub.add_parser("kill", help="The kill switch: stop every exchange engine.")
        kill.add_argument("--close", action="store_true", help="Also close their positions")
        kill.add_argument("--user", default="", help="Who pulls it (recorded)")

    def handle(self, *args, what: str, **options):
        try:
            getattr(self, f"_{what}")(**options)
        except (ValidationError, LiveTradingRefused, VaultError, LookupError) as exc:
            raise CommandError(_message(exc)) from None

    def _fernetkey(self, **options):
        self.stdout.write(Fernet.generate_key().decode())

    def _account(self, *, name: str, exchange: str, live: bool, **options):
        api_key = os.environ.get(KEY_ENV) or getpass.getpass("API key: ")
        secret = os.environ.get(SECRET_ENV) or getpass.getpass("API secret: ")
        password = os.environ.get(PASSWORD_ENV, "")
        account = account_save(
            name=name,
            exchange=exchange,
            testnet=not live,
            api_key=api_key,
            secret=secret,
            password=password,
        )
        self.stdout.write(f"Saved exchange account {account} (keys encrypted)")

    def _broker(self, *, symbol: str, mode: str, account: str, user: str, **options):
        command = engine_set_broker(
            symbol=symbol, broker=mode, account=account, user=_user(user), source="shell"
        )
        self.stdout.write(f"{symbol}: broker {mode}" + ("" if command else " (unchanged)"))

    def _kill(self, *, close: bool, user: str, **options):
        pulled = kill_switch(
            close_positions=close, user=_user(user) if user else None, source="shell"
        )
        self.stdout.write(f"Kill switch pulled: {len(pulled.symbols)} engines stopping")


def _user(username: str):
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise LookupError(f"no user {username!r}")
    return user


def _message(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return (
            "; ".join(
                f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items()
            )
            if hasattr(exc, "error_dict")
            else " ".join(exc.messages)
        )
    return str(exc).strip("'\"")
