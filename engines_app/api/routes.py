"""The Epic-1 guide's endpoints. Thin: check the input, call a selector or a service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseNotModified, JsonResponse
from django.utils.cache import patch_vary_headers
from django.utils.http import parse_etags
from ninja import Router, Status
from ninja.errors import HttpError
from pydantic import WithJsonSchema

from ..models import CONTROL_PERMISSION, Engine, EngineCommand
from ..runtime.engine import SYMBOL_RE, symbol_problem
from ..selectors.engines import STATUSES, engine_status_of
from ..selectors.fleet_cache import encode, fleet_page, fleet_snapshot
from ..selectors.runners import runners_list
from ..selectors.trading import MAX_PAGE_SIZE, profit_summary, trades_list
from ..services.engines import (
    EngineNotFound,
    engine_configure,
    engine_restart,
    engine_start,
    engine_stop,
)
from ..services.exchanges import kill_switch
from .auth import ReadSessionAuth, ReadTokenAuth
from .reads import read, read_fleet
from .schemas import (
    CommandOut,
    ConfigureIn,
    EngineOut,
    ErrorOut,
    FleetOut,
    KillSwitchIn,
    KillSwitchOut,
    ProfitSummaryOut,
    RunnersOut,
    TradesOut,
)

MAX_PAGE = 1_000_000
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut}

# What the schema tells clients; the checks stay in the views, whose 400s say what is wrong
# (with a hint for lower case) better than a generic validation error would.
Symbol = Annotated[
    str, WithJsonSchema({"type": "string", "pattern": SYMBOL_RE.pattern, "example": "BTCUSDT"})
]
Page = Annotated[int, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_PAGE})]
PageSize = Annotated[
    int, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE})
]

# The status reads run on the reader threads, with their kept connections (``reads``).
READ_AUTH = [ReadTokenAuth(), ReadSessionAuth()]
router = Router(tags=["engines"])
runners_router = Router(tags=["runners"])


def checked_symbol(symbol: str) -> str:
    """The symbol as given, or a 400 saying what is wrong. Lower case is refused, not
    guessed at: one engine has one URL."""
    if problem := symbol_problem(symbol):
        hint = f" (did you mean {symbol.upper()}?)" if not symbol_problem(symbol.upper()) else ""
        raise HttpError(400, f"{problem}{hint}")
    return symbol


def _engine(symbol: str) -> Engine:
    engine = Engine.objects.filter(symbol=checked_symbol(symbol)).first()
    if engine is None:
        raise HttpError(404, f"no engine with symbol {symbol}")
    return engine


STATUS_LIST = ",".join(STATUSES)
Statuses = Annotated[
    str,
    WithJsonSchema(
        {"type": "string", "pattern": f"^({'|'.join(STATUSES)})(,({'|'.join(STATUSES)}))*$"}
    ),
]
SymbolPrefix = Annotated[
    str, WithJsonSchema({"type": "string", "pattern": "^[A-Za-z0-9]{1,20}$", "example": "BTC"})
]


def checked_statuses(status: str) -> list[str]:
    """``status`` (one or several, comma-separated) as a list, or a 400 naming the allowed."""
    wanted = status.split(",")
    if bad := [value for value in wanted if value not in STATUSES]:
        raise HttpError(400, f"unknown status {', '.join(map(repr, bad))}: use {STATUS_LIST}")
    return wanted


def checked_prefix(symbol: str) -> str:
    """The start of a symbol, upper-cased, or a 400: a search, so case does not matter."""
    if not symbol or len(symbol) > 20 or not symbol.isascii() or not symbol.isalnum():
        raise HttpError(400, "symbol must be 1 to 20 letters or digits (the start of a symbol)")
    return symbol.upper()


def checked_page(page: int | None, page_size: int | None) -> None:
    """A 400 for a page out of range. A page far past the end would overflow SQLite's
    OFFSET ("datatype mismatch")."""
    if (page is not None and not 1 <= page <= MAX_PAGE) or (
        page_size is not None and not 1 <= page_size <= MAX_PAGE_SIZE
    ):
        raise HttpError(
            400, f"page must be >= 1 (at most {MAX_PAGE}) and page_size from 1 to {MAX_PAGE_SIZE}"
        )


def takes_gzip(request: HttpRequest) -> bool:
    """Whether ``Accept-Encoding`` takes gzip: named (or ``*`` when it is not) with a
    q-value above 0 (RFC 9110, 12.5.3)."""
    weights: dict[str, float] = {}
    for item in request.headers.get("Accept-Encoding", "").lower().split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[coding] = weight
    return weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0))) > 0


def etagged(
    request: HttpRequest, body: bytes, etag: str, *, gzipped: bool = False, vary: bool = False
) -> HttpResponse:
    """``body`` as JSON with its ETag, or a 304 with no body when the client has it
    (If-None-Match, compared weakly as RFC 9110 says; other preconditions are ignored).

    ``gzipped``: ``body`` is gzipped; its ETag is then weak, as Django's ``GZipMiddleware``
    makes it, so either form sent back matches. ``vary``: the answer depends on
    ``Accept-Encoding``."""
    sent = parse_etags(request.headers.get("If-None-Match", ""))
    fresh = "*" in sent or etag in {tag.removeprefix("W/") for tag in sent}
    response = (
        HttpResponseNotModified()
        if fresh
        else HttpResponse(body, content_type="application/json; charset=utf-8")
    )
    if gzipped and not fresh:
        response["Content-Encoding"] = "gzip"
    response["ETag"] = f"W/{etag}" if gzipped else etag
    # Each client asks again each time; it may keep the answer and ask with If-None-Match.
    response["Cache-Control"] = "private, no-cache"
    if vary:
        patch_vary_headers(response, ("Accept-Encoding",))
    return response


@router.get(
    "/status",
    response={200: FleetOut, 304: None, **ERRORS},
    summary="Status of every engine",
    auth=READ_AUTH,
)
def status_all(
    request: HttpRequest,
    status: Statuses | None = None,
    symbol: SymbolPrefix | None = None,
    page: Page | None = None,
    page_size: PageSize | None = None,
):
    """``{total, running, crashed, stopped, …every other status…, matched, engines: [...]}``.

    The counts are always the whole fleet's. ``status`` keeps the engines with that status
    (several: comma-separated); ``symbol`` those whose symbol starts with it (any case);
    ``matched`` is how many engines passed. With ``page`` or ``page_size`` (1-500, default
    50) it gives one page of them, in symbol order, and says ``page`` and ``page_size``.

    ``ETag``: send it back as ``If-None-Match`` for a 304 with no body while nothing
    changed. The whole list is gzipped for a client that sends ``Accept-Encoding: gzip``;
    its ETag is then weak (``W/``), and either form matches."""
    statuses = None if status is None else checked_statuses(status)
    prefix = "" if symbol is None else checked_prefix(symbol)
    checked_page(page, page_size)
    whole = unfiltered(statuses, prefix, page, page_size)
    gzip_ok = whole and takes_gzip(request)
    body, etag, gzipped = read_fleet(fleet_document, statuses, prefix, page, page_size, gzip_ok)
    return etagged(request, body, etag, gzipped=gzipped, vary=whole)


def unfiltered(
    statuses: list[str] | None, prefix: str, page: int | None, page_size: int | None
) -> bool:
    """Whether the list asked for is the whole fleet's: the snapshot's own answer."""
    return statuses is None and not prefix and page is None and page_size is None


def fleet_document(
    statuses: list[str] | None,
    prefix: str,
    page: int | None,
    page_size: int | None,
    gzip_ok: bool = False,
) -> tuple[bytes, str, bool]:
    """The list's JSON, its ETag and whether it is gzipped: the snapshot's own while
    nothing is filtered, gzipped for a client that takes it (``gzip_ok``). On the fleet
    reads' thread, whose connection only reads."""
    snapshot = fleet_snapshot(reads_only=True)
    if unfiltered(statuses, prefix, page, page_size):
        if gzip_ok:
            return snapshot.gzipped, snapshot.etag, True
        return snapshot.body, snapshot.etag, False
    page_document = fleet_page(
        snapshot, statuses=statuses, prefix=prefix, page=page, page_size=page_size
    )
    return *encode(page_document), False


@router.get(
    "/status/{symbol}",
    response={200: EngineOut, **ERRORS},
    summary="Status of one engine",
    auth=READ_AUTH,
)
def status_one(request: HttpRequest, symbol: Symbol):
    found = read(engine_status_of, checked_symbol(symbol))
    if found is None:
        raise HttpError(404, f"no engine with symbol {symbol}")
    # Built in its documented shape, as the list's rows are: no second validation.
    return JsonResponse(found, content_type="application/json; charset=utf-8")


def _steer(request: HttpRequest, symbol: str, service: Callable[..., EngineCommand], **edit):
    checked_symbol(symbol)
    if not request.auth.has_perm(CONTROL_PERMISSION):
        raise HttpError(403, "you do not have permission to control engines")
    try:
        command = service(symbol=symbol, user=request.auth, source="api", **edit)
    except EngineNotFound as exc:
        raise HttpError(404, str(exc)) from None
    except DjangoValidationError as exc:  # a bad config: the reason, and nothing changed
        raise HttpError(400, "; ".join(exc.messages)) from None
    if command is None:
        engine = Engine.objects.get(symbol=symbol)
        return Status(
            200,
            {
                "symbol": symbol,
                "action": "configure",
                "command_id": 0,
                "outcome": "done",
                "desired_state": engine.desired_state,
                "status": engine.status,
                "message": "nothing changed",
            },
        )
    engine = command.engine
    return Status(
        202,
        {
            "symbol": symbol,
            "action": command.action,
            "command_id": command.id,
            "outcome": command.outcome,
            "desired_state": engine.desired_state,
            "status": engine.status,
            "message": f"{command.action} {symbol} requested; the runner carries it out",
        },
    )


CONTROL = {"response": {202: CommandOut, **ERRORS}}


@router.post(
    "/configure/{symbol}",
    summary="Change an engine's config",
    response={200: CommandOut, 202: CommandOut, **ERRORS},
)
def configure(request: HttpRequest, symbol: Symbol, body: ConfigureIn):
    """Replace the engine's config (strategy, its ``params``, limits …) and, when given, its
    cycle interval. A bad value is refused with the reason (400) and nothing changes; the
    runner restarts a running engine with the new config (202). 200: nothing changed."""
    edit = {"config": body.config}
    if "cycle_interval" in body.model_fields_set:
        edit["cycle_interval"] = body.cycle_interval
    return _steer(request, symbol, engine_configure, **edit)


@router.post("/start/{symbol}", summary="Start an engine", **CONTROL)
def start(request: HttpRequest, symbol: Symbol):
    """Want the engine running (a failed engine gets a fresh restart budget). 202: the
    runner carries it out within a second; follow it with ``GET /engines/status/{symbol}``."""
    return _steer(request, symbol, engine_start)


@router.post("/stop/{symbol}", summary="Stop an engine", **CONTROL)
def stop(request: HttpRequest, symbol: Symbol):
    """Want the engine stopped; it finishes its current cycle first."""
    return _steer(request, symbol, engine_stop)


@router.post("/restart/{symbol}", summary="Restart an engine", **CONTROL)
def restart(request: HttpRequest, symbol: Symbol):
    """Restart the engine now with a fresh restart budget; it is wanted running after."""
    return _steer(request, symbol, engine_restart)


@router.post(
    "/kill-switch",
    response={202: KillSwitchOut, **ERRORS},
    summary="Pull the kill switch: stop every live and testnet engine",
)
def kill(request: HttpRequest, body: KillSwitchIn):
    """Stop every engine that trades on an exchange (live and testnet) now, and with
    ``close_positions`` close their positions at market. Recorded and alerted. Needs the
    permission to control engines."""
    if not request.auth.has_perm(CONTROL_PERMISSION):
        raise HttpError(403, "you do not have permission to control engines")
    pulled = kill_switch(close_positions=body.close_positions, user=request.auth, source="api")
    message = f"kill switch pulled: {len(pulled.symbols)} engines stopping"
    return Status(
        202,
        {
            "id": pulled.id,
            "close_positions": pulled.close_positions,
            "symbols": pulled.symbols,
            "message": message,
        },
    )


@router.get("/trades/{symbol}", response={200: TradesOut, **ERRORS}, summary="Fills of one engine")
def trades(request: HttpRequest, symbol: Symbol, page: Page = 1, page_size: PageSize = 50):
    """The engine's paper fills, newest first, ``page_size`` (1-500) a page."""
    engine = _engine(symbol)
    checked_page(page, page_size)
    return trades_list(symbol=engine.symbol, page=page, page_size=page_size)


@router.get("/profit", response={200: ProfitSummaryOut, **ERRORS}, summary="Profit")
def profit(request: HttpRequest):
    """Per engine and in total: realized, unrealized, fees, total PnL, trades, win rate."""
    return profit_summary()


@runners_router.get("", response={200: RunnersOut, **ERRORS}, summary="Runners")
def runners(request: HttpRequest):
    """Every runner that has written a heartbeat: the engines it holds and runs, when it
    started and was last seen, and whether it is live (seen within the lease, not stopped)."""
    return {"runners": runners_list()}
