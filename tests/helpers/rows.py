"""Users, tokens and rows the tests set up or read back."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from contextlib import closing
from datetime import datetime, timedelta

from django.contrib.auth.models import Permission
from django.db.models import F
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from engines_app.api.tokens import api_token_create
from engines_app.models import Engine, RunnerHeartbeat
from engines_app.runner import store
from engines_app.runtime.broker import Book, execute
from engines_app.runtime.events import BookChanged
from engines_app.testing import Installation


def make_user(django_user_model, name: str, *, control: bool = False):
    """A user with no password (tests log in directly), allowed to control engines if asked."""
    user = django_user_model.objects.create_user(name)
    if control:
        user.user_permissions.add(Permission.objects.get(codename="control_engine"))
    return user


def hold(engines: Iterable[Engine], runner: str = "runner-a", seconds: float = 15.0) -> None:
    """What a runner's claim leaves on the engines' rows: ``runner`` holds their leases until
    ``seconds`` from now (negative: the lease ran out that long ago). Like the runner's
    renewal, it leaves ``updated_at`` alone."""
    expires = timezone.now() + timedelta(seconds=seconds)
    Engine.objects.filter(pk__in=[engine.pk for engine in engines]).update(
        lease_owner=runner, lease_epoch=F("lease_epoch") + 1, lease_expires_at=expires
    )


def heartbeat(
    runner: str = "runner-a", *, last_seen: datetime | None = None, **fields
) -> RunnerHeartbeat:
    """A runner's heartbeat row (a flush of ``runner``), seen ``last_seen`` (now by default)."""
    now = timezone.now()
    fields = {"last_seen": last_seen or now, **fields}
    return RunnerHeartbeat.objects.update_or_create(
        name=runner, defaults=fields, create_defaults={"started_at": now, **fields}
    )[0]


def bearer(user) -> dict[str, str]:
    """The Authorization header of a new API token of ``user``, for the test client."""
    _, key = api_token_create(user=user, name="test")
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def book_rows(engine: Engine, steps, *, fee_rate=0.001) -> tuple[Book, list[store.BookRow]]:
    """The book and the store's rows after fills ``(side, qty, price, at)`` on ``engine``."""
    book, rows = Book(), []
    for side, qty, price, at in steps:
        fill = execute(
            book,
            symbol=engine.symbol,
            side=side,
            qty=qty,
            price=price,
            at=at,
            fee_rate=fee_rate,
            slippage=0.0,
        )
        event = BookChanged(
            engine.symbol,
            at,
            fill,
            book.qty or None,
            book.daily_pnl(),
            book.total_pnl(),
            book.trade_count,
        )
        rows.append(store.BookRow(engine.id, event))
    return book, rows


def query(installation: Installation, sql: str, *args) -> list[tuple]:
    """Read an installation's SQLite file directly, as its processes write it."""
    path = installation.data_dir / "levipanel.sqlite3"
    with closing(sqlite3.connect(path, timeout=20)) as db:
        return db.execute(sql, args).fetchall()


# (symbol, heartbeat) of every engine as the panel shows it (``heartbeat_expression``), in
# SQL that SQLite and PostgreSQL both take: an engine in step shows its runner's beat.
SHOWN_HEARTBEATS = """
SELECT e.symbol,
    CASE WHEN e.beats_with_runner AND (e.last_heartbeat IS NULL OR r.beats_since > e.last_heartbeat)
    THEN r.beats_since ELSE e.last_heartbeat END
FROM engines_app_engine e LEFT JOIN engines_app_runnerheartbeat r ON r.name = e.lease_owner
"""


def engine_row(installation: Installation, symbol: str) -> tuple:
    """(position, trade_count, total_pnl, status) of one engine of an installation."""
    return query(
        installation,
        "SELECT position, trade_count, total_pnl, status FROM engines_app_engine WHERE symbol = ?",
        symbol,
    )[0]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
