"""The store's bulk writes and reads on both databases: on PostgreSQL the rows go as one
JSON text (``update_each``), PnL points as arrays, and lists of ids or symbols as one array
parameter (``AnyOf``); SQLite takes statements and IN lists. The same script runs on each
and must store and find the same values, the awkward ones included."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from typing import Any

import pytest

from engines_app.runner import store
from engines_app.testing import Installation

# Written by ``store.write`` through every bulk path, then read back as plain values.
ROUND_TRIP = r"""
import json
from datetime import UTC, datetime
from engines_app.models import Engine, EnginePnlSample
from engines_app.runner import store
from engines_app.runtime.events import BookChanged

symbols = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT"]
engines = Engine.objects.bulk_create([Engine(symbol=s) for s in symbols])
a, b, c, d = (e.pk for e in engines)
at = 1764790245.123456  # microseconds kept
reason = 'quote " backslash \\ comma , braces {} ünïcode ✓\nnewline'
statuses = [
    store.StatusRow(a, "halted", reason, at - 60, 0, 5, None, 0, None, at, last_heartbeat=at),
    store.StatusRow(b, "backoff", "", None, 2, 3, at + 30.5, 7, "ValueError: 'x'", at),
]
books = [
    # pnl_day given: stored; None (C's): the stored day and its figures are kept
    store.BookRow(a, BookChanged("AAAUSDT", at, None, 1.5, -2.25, 10.125, 3, 20425, 8.0, 9.5)),
    store.BookRow(c, BookChanged("CCCUSDT", at, None, None, 0.1, 0.2, 1, None, 0.0, 0.0)),
]
beats = [
    store.HeartbeatRow(d, at, 4, reason, -0.5, 1e-9, 123456.789, 9, at - 1.5),
]
samples = [store.PnlSampleRow(a, -2.25, 10.125), store.PnlSampleRow(b, 0.0, 1e300)]
# C's day as stored before: a book without a day keeps it
Engine.objects.filter(pk=c).update(pnl_day="2025-12-02", day_start_pnl=4.0, loss_base=5.0)
store.write(statuses=statuses, errors=[], restarts=[], heartbeats=beats, books=books,
            pnl_samples=samples)
stamped = Engine.objects.get(pk=d).updated_at
store.write(statuses=[], errors=[], restarts=[], heartbeats=beats)  # D again, nothing new
same_stamp = Engine.objects.get(pk=d).updated_at == stamped

# Ticks on more grains than MAX_GROUPS: one UPDATE of the last tick a row (``update_each``)
many = Engine.objects.bulk_create(
    [Engine(symbol=f"T{i:03d}USDT") for i in range(store.MAX_GROUPS + 6)])
store.write(statuses=[], errors=[], restarts=[], heartbeats=[
    store.HeartbeatRow(e.pk, at, 0, None, None, 0.0, 0.0, 0, at - i * 0.1 - 0.05, changed=False)
    for i, e in enumerate(many)])
ticks = [
    round(at - tick.timestamp(), 6)
    for tick in Engine.objects.filter(symbol__startswith="T").order_by("symbol")
    .values_list("last_tick_at", flat=True)
]

def iso(value):
    return None if value is None else value.isoformat()

fields = ("symbol", "status", "status_reason", "status_changed_at", "started_at",
          "restart_attempt", "restart_budget_left", "next_retry_at", "error_count",
          "last_error", "last_heartbeat", "last_tick_at", "position", "daily_pnl",
          "total_pnl", "trade_count", "pnl_day", "day_start_pnl", "loss_base")
rows = [
    [iso(v) if hasattr(v, "isoformat") else v for v in row]
    for row in Engine.objects.filter(symbol__in=symbols).order_by("symbol").values_list(*fields)
]
points = sorted(
    [s, iso(t), p, q]
    for s, t, p, q in EnginePnlSample.objects.values_list(
        "engine__symbol", "at", "daily_pnl", "total_pnl")
)
found = {
    "control": sorted(store.control_rows(["BBBUSDT", "DDDUSDT"])),
    "states": sorted(store.load_states(["AAAUSDT", "CCCUSDT"])),
    "halted": sorted(store.halted_on(["AAAUSDT", "BBBUSDT"], at)),
}
print(json.dumps({"rows": rows, "points": points, "found": found, "same_stamp": same_stamp,
                  "ticks": ticks}))
"""


REASON = 'quote " backslash \\ comma , braces {} ünïcode ✓\nnewline'
AT = "2025-12-03T19:30:{}+00:00"  # the script's ``at`` is 19:30:45.123456
STARTED_AT = "2025-12-03T19:29:45.123456+00:00"  # a minute before
RETRY_AT = "2025-12-03T19:31:15.623456+00:00"  # 30.5 s after


def expected_rows() -> list[list]:
    never = ["stopped", "", None, None, 0, None, None, 0, "", None, None]
    return [
        # A: a status and a book, the day from the book (day 20425)
        ["AAAUSDT", "halted", REASON, AT.format("45.123456"), STARTED_AT]
        + [0, 5, None, 0, "", AT.format("45.123456"), None]
        + [1.5, -2.25, 10.125, 3, "2025-12-03", 8.0, 9.5],
        # B: a status in backoff with its error; no beat given: as stored
        ["BBBUSDT", "backoff", "", AT.format("45.123456"), None, 2, 3, RETRY_AT]
        + [7, "ValueError: 'x'", None, None, None, 0.0, 0.0, 0, None, 0.0, 0.0],
        # C: a book without a day: the stored day and its figures kept
        ["CCCUSDT", *never, None, 0.1, 0.2, 1, "2025-12-02", 4.0, 5.0],
        # D: a beat with changed values, its beat and tick at the start of their grain
        ["DDDUSDT", "stopped", "", None, None, 0, None, None, 4, REASON, AT.format("45.100000")]
        + [AT.format("43.600000"), -0.5, 1e-9, 123456.789, 9, None, 0.0, 0.0],
    ]


def run(installation: Installation, script: str = ROUND_TRIP) -> Any:
    """The script's last line, JSON, run on a migrated database."""
    installation.migrate()
    done = installation.manage("shell", "-c", script)
    return json.loads(done.stdout.strip().splitlines()[-1])


def check(found: dict, *, stamped_again: bool) -> None:
    for row, want in zip(found["rows"], expected_rows(), strict=True):
        assert row[0] == want[0]
        assert row == want, (row, want)
    assert len(found["points"]) == 2
    (s1, t1, d1, p1), (s2, t2, d2, p2) = found["points"]
    assert (s1, d1, p1, s2, d2, p2) == ("AAAUSDT", -2.25, 10.125, "BBBUSDT", 0.0, 1e300)
    assert t1 == t2  # one stamp for the write
    # A row written again with nothing new: PostgreSQL keeps its ``updated_at`` (``when_changed``,
    # a HOT update); SQLite rewrites the row and stamps it.
    assert found["same_stamp"] is not stamped_again
    # Ticks 0.05, 0.15, 0.25 s… before ``at`` (19:30:45.123456), each stored at the start of
    # its tenth of a second: 19:30:45.0, 44.9, 44.8…
    assert found["ticks"] == [round(0.123456 + i * 0.1, 6) for i in range(len(found["ticks"]))]
    assert len(found["ticks"]) == store.MAX_GROUPS + 6
    assert found["found"] == {
        "control": ["BBBUSDT", "DDDUSDT"],
        "states": ["AAAUSDT", "CCCUSDT"],
        "halted": ["AAAUSDT"],
    }


def test_the_bulk_writes_and_reads_on_sqlite(tmp_path):
    with Installation(tmp_path / "data") as installation:
        check(run(installation), stamped_again=True)


@pytest.mark.postgres
def test_the_bulk_writes_and_reads_on_postgresql(postgres_database, tmp_path):
    with Installation(tmp_path / "data", {"DATABASE_URL": postgres_database}) as installation:
        check(run(installation), stamped_again=False)


NON_FINITE = r"""
import json, math
from engines_app.models import Engine
from engines_app.runner import store
e = Engine.objects.create(symbol="NANUSDT")
inf = float("inf")
store.write(statuses=[], errors=[], restarts=[], heartbeats=[
    store.HeartbeatRow(e.pk, 1764790245.0, 0, None, float("nan"), inf, -inf, 1, None)])
row = Engine.objects.values_list("position", "daily_pnl", "total_pnl").get()
print(json.dumps([repr(v) for v in row]))
"""


@pytest.mark.postgres
def test_a_figure_that_is_not_finite_is_stored_as_such_on_postgresql(postgres_database, tmp_path):
    """JSON has no number for NaN or an infinity: they go as the text PostgreSQL reads."""
    with Installation(tmp_path / "data", {"DATABASE_URL": postgres_database}) as installation:
        assert run(installation, NON_FINITE) == ["nan", "inf", "-inf"]


def test_json_rows_keeps_every_value_exact():
    moment = datetime(2026, 12, 3, 19, 30, 45, 123456, tzinfo=UTC)
    rows = [(1.1, None, 'a"b\\c', moment, date(2026, 12, 3), True, 7)]
    assert json.loads(store.json_rows(rows)) == [
        [1.1, None, 'a"b\\c', "2026-12-03T19:30:45.123456+00:00", "2026-12-03", True, 7]
    ]
    odd = json.loads(store.json_rows([(math.nan, math.inf, -math.inf, 0.5)]))
    assert odd == [["NaN", "Infinity", "-Infinity", 0.5]]
    with pytest.raises(TypeError, match="object is not a column value"):
        store.json_rows([(object(),)])
