"""Where an engine's orders go: ``paper`` (``broker.execute``, in memory, the default),
``testnet`` (the exchange's sandbox through ccxt) or ``live`` (real orders through ccxt).

An exchange order's client order id is made by the engine from what is stored: the
engine's id and the number of its next fill (``lv<engine>x<seq>``). Before an order is
sent, and before it is sent again after a timeout, a 429 or a restart, the exchange is
asked for an order of that id: one found is the engine's (booked, never sent twice). The
fill's id is the client order id, so a fill stored already is never stored twice.

The position is reconciled with the exchange's balance of the market's base currency at
start and every ``reconcile_every`` seconds: a difference is a ``PositionMismatch`` (the
engine fails, an alert goes out), never a guess.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, EngineError, FatalEngineError
from .exchanges import Credentials, make_exchange, unknown_market
from .feeds.sim import is_number
from .redact import redact_text

log = logging.getLogger("levipanel.engine")

PAPER, TESTNET, LIVE = "paper", "testnet", "live"
BROKERS = (PAPER, TESTNET, LIVE)
LIVE_ENV = "LEVIPANEL_LIVE_TRADING"
BROKER_OPTIONS = {"account", "reconcile_every", "base_offset", "order_timeout"}
RETRIES = 4  # tries of one order through 429s and timeouts, the exchange asked each time


def live_trading_enabled() -> bool:
    """Live orders are off for the whole installation unless LEVIPANEL_LIVE_TRADING=1."""
    return os.environ.get(LIVE_ENV, "") == "1"


LIVE_OFF = f"live trading is off for this installation (set {LIVE_ENV}=1 to allow it)"


class OrderRejected(EngineError):
    """The exchange refused an order (funds, size, market closed): nothing was filled."""


class OrderUnknown(EngineError):
    """An order's fate could not be learned (timeouts, 429s): it is asked for again, by
    its client order id, before the next order."""


class PositionMismatch(FatalEngineError):
    """The exchange's balance differs from the engine's book: stop, never guess."""


@dataclass(frozen=True)
class Account:
    """An exchange account, as the installation stores it (keys decrypted)."""

    name: str
    exchange: str
    testnet: bool
    credentials: Credentials

    def __repr__(self) -> str:
        return f"Account({self.name!r}, {self.exchange!r}, testnet={self.testnet})"


# The installation's accounts, by name: set by the runner (it reads them from the
# database); None: no account can be used. An awaitable, so the loop never blocks.
AccountSource = Callable[[str], Awaitable[Account | None]]
accounts: AccountSource | None = None


def broker_problems(
    broker: object, options: object, feed: object, feed_options: object
) -> list[str]:
    """Every reason this broker configuration cannot run (no network: the market and the
    account are checked when the engine starts)."""
    if broker not in BROKERS:
        return [f"broker must be one of: {', '.join(BROKERS)}"]
    if not isinstance(options, Mapping):
        return ["broker_options must be a mapping"]
    out = [f"unknown broker option: {key}" for key in sorted(set(options) - BROKER_OPTIONS)]
    if broker == PAPER:
        return out
    if feed != "ccxt" or not isinstance(feed_options, Mapping):
        out.append(f'a {broker} broker needs the "ccxt" feed: its exchange and market')
    account = options.get("account")
    if not isinstance(account, str) or not account:
        out.append(f"broker_options.account is required for a {broker} broker")
    every = options.get("reconcile_every", 300)
    if not is_number(every) or not 1 <= every <= 86_400:
        out.append("broker_options.reconcile_every must be seconds, 1 to 86400")
    offset = options.get("base_offset", 0.0)
    if not is_number(offset) or offset < 0:
        out.append("broker_options.base_offset must be a number >= 0")
    timeout = options.get("order_timeout", 10)
    if not is_number(timeout) or not 0 < timeout <= 120:
        out.append("broker_options.order_timeout must be seconds, up to 120")
    return out


@dataclass(frozen=True, slots=True)
class Executed:
    """What the exchange did with one order: ``qty`` filled at ``price`` on average (0 when
    nothing was), the fee in the quote currency, and the base currency's change."""

    client_id: str
    side: str
    qty: float
    price: float
    fee: float
    status: str


class ExchangeBroker:
    """One engine's orders on one exchange market, through one ccxt client."""

    def __init__(
        self,
        mode: str,
        *,
        exchange: str,
        market: str,
        options: Mapping[str, Any],
        order_tag: str,
        symbol: str,
    ) -> None:
        self.mode, self.exchange_id, self.market = mode, exchange, market
        self.account_name: str = options["account"]
        self.reconcile_every = float(options.get("reconcile_every", 300))
        self.base_offset = float(options.get("base_offset", 0.0))
        self.order_timeout = float(options.get("order_timeout", 10))
        self.order_tag, self.symbol = order_tag, symbol
        self.client: Any = None
        self.step = 1e-8  # the market's amount step, from its precision
        self.reconcile_due = 0.0  # monotonic
        # Orders of the next fill's number that ended with nothing filled (their ids are
        # spent): the next one is ``lv<tag>x<seq>r<attempt>``.
        self.attempt = 0

    def client_id(self, seq: int) -> str:
        base = f"lv{self.order_tag}x{seq}"
        return f"{base}r{self.attempt}" if self.attempt else base

    # Start and stop ----------------------------------------------------------------------

    async def open(self) -> None:
        """Check the switches and the account, connect, check the market. Raises
        ConfigError (fatal) for what no retry can fix."""
        if self.mode == LIVE and not live_trading_enabled():
            raise ConfigError(LIVE_OFF)
        if accounts is None:
            raise ConfigError("no exchange accounts are available to this runner")
        account = await accounts(self.account_name)
        if account is None:
            raise ConfigError(f"no exchange account named {self.account_name!r}")
        if account.exchange != self.exchange_id:
            raise ConfigError(
                f"account {account.name!r} is on {account.exchange}, the feed on {self.exchange_id}"
            )
        if account.testnet != (self.mode == TESTNET):
            kind = "a testnet" if account.testnet else "a live"
            raise ConfigError(f"account {account.name!r} is {kind} account: broker {self.mode}")
        self.client = make_exchange(
            self.exchange_id, sandbox=self.mode == TESTNET, credentials=account.credentials
        )
        await self._call(self.client.load_markets)
        if self.market not in self.client.markets:
            raise ConfigError(unknown_market(self.client, self.market))
        precision = self.client.markets[self.market].get("precision", {}).get("amount")
        if isinstance(precision, float) and 0 < precision < 1:  # ccxt's TICK_SIZE mode
            self.step = precision

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    # Orders ------------------------------------------------------------------------------

    async def find(self, seq: int) -> Executed | None:
        """The engine's order for fill number ``seq``, if the exchange has one that filled
        (finished, or waited for and the rest cancelled); None when none reached it. Orders
        that filled nothing are skipped, their ids spent."""
        import ccxt.pro as ccxt

        while True:
            client_id = self.client_id(seq)
            try:
                order = await self._call(
                    self.client.fetch_order, None, self.market, {"origClientOrderId": client_id}
                )
            except ccxt.OrderNotFound:
                return None
            executed = await self._settle(order, client_id)
            if executed.qty > 0:
                return executed
            self.attempt += 1

    async def submit(self, seq: int, side: str, qty: float) -> Executed:
        """Send a market order (unless the exchange has it already), retrying 429s and
        timeouts, asking for it by its client order id before every retry."""
        import ccxt.pro as ccxt

        client_id = self.client_id(seq)
        amount = float(self.client.amount_to_precision(self.market, qty))
        delay = 0.25
        for attempt in range(1, RETRIES + 1):
            try:
                if attempt > 1 and (found := await self.find(seq)) is not None:
                    return found
                order = await self.client.create_order(
                    self.market, "market", side, amount, None, {"newClientOrderId": client_id}
                )
                return await self._settle(order, client_id)
            except (ccxt.InsufficientFunds, ccxt.InvalidOrder, ccxt.BadRequest) as exc:
                if "duplicate" in str(exc).lower() and (found := await self.find(seq)):
                    return found
                raise OrderRejected(f"{side} {amount:g} {self.market}: {_reason(exc)}") from None
            except ccxt.OperationFailed as exc:  # network errors, 429s, the exchange's 5xx
                log.warning(
                    "Order %s on %s: %s (try %d of %d)",
                    client_id,
                    self.exchange_id,
                    _reason(exc),
                    attempt,
                    RETRIES,
                    extra={"symbol": self.symbol},
                )
                await asyncio.sleep(delay)
                delay *= 2
        raise OrderUnknown(f"order {client_id}: no answer from {self.exchange_id}, asked again")

    async def _settle(self, order: Mapping[str, Any], client_id: str) -> Executed:
        """Wait for an open order to finish (cancelling what is left after the timeout),
        then say what it filled."""
        deadline = time.monotonic() + self.order_timeout
        while order.get("status") == "open":
            if time.monotonic() > deadline:
                order = await self._call(
                    self.client.cancel_order, order["id"], self.market
                ) or await self._call(self.client.fetch_order, order["id"], self.market)
                break
            await asyncio.sleep(0.2)
            order = await self._call(self.client.fetch_order, order["id"], self.market)
        filled = float(order.get("filled") or 0.0)
        price = float(order.get("average") or order.get("price") or 0.0)
        base, quote = self.market.split(":")[0].split("/")
        fee = 0.0
        base_fee = 0.0
        for item in order.get("fees") or ([order["fee"]] if order.get("fee") else []):
            cost = float(item.get("cost") or 0.0)
            if item.get("currency") == base:
                base_fee += cost
                fee += cost * price
            elif item.get("currency") == quote:
                fee += cost
        side = order.get("side") or ""
        # A fee paid in the base currency changes the position: the book follows it.
        qty = filled - base_fee if side == "buy" else filled + base_fee
        return Executed(client_id, side, max(qty, 0.0), price, fee, str(order.get("status")))

    # Position ------------------------------------------------------------------------------

    async def position(self) -> float:
        """The exchange's balance of the market's base currency, less ``base_offset`` (a
        holding that is not the engine's)."""
        balance = await self._call(self.client.fetch_balance)
        base = self.market.split("/")[0]
        return float((balance.get("total") or {}).get(base) or 0.0) - self.base_offset

    async def reconcile(self, book_qty: float) -> None:
        """Raise PositionMismatch when the exchange's position differs from the book's."""
        held = await self.position()
        self.reconcile_due = time.monotonic() + self.reconcile_every
        if abs(held - book_qty) > max(self.step, 1e-9) * 1.5:
            raise PositionMismatch(
                f"position mismatch on {self.exchange_id} {self.market}: the exchange holds "
                f"{held:g} {self.market.split('/')[0]} (base_offset {self.base_offset:g} "
                f"taken off), the book {book_qty:g}; stopped, nothing guessed"
            )

    async def _call(self, method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """A read, retried through 429s and network errors a few times."""
        import ccxt.pro as ccxt

        delay = 0.25
        for attempt in range(1, RETRIES + 1):
            try:
                return await method(*args)
            except ccxt.OperationFailed:
                if attempt == RETRIES:
                    raise
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {redact_text(str(exc))[:200]}"
