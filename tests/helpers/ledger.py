"""The ledger invariants every fault must leave intact, read from any DB-API connection
(psycopg or sqlite3) on an installation's database."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

ENGINES = "SELECT id, symbol, position, trade_count, lease_epoch FROM engines_app_engine"
TRADES = (
    "SELECT engine_id, seq, fill_id, side, qty, position_after, runner, epoch "
    "FROM engines_app_trade ORDER BY engine_id, seq"
)
TOLERANCE = 1e-9


def ledger_problems(connection: Any) -> list[str]:
    """Every broken ledger invariant of the database behind ``connection``, one line each.

    Read it when no runner writes any more (stopped or killed): the two reads are not one
    snapshot."""
    engines = connection.execute(ENGINES).fetchall()
    trades = connection.execute(TRADES).fetchall()
    return check_ledger(engines, trades)


def check_ledger(engines: list[tuple], trades: list[tuple]) -> list[str]:
    """The problems of ``engines`` rows ``(id, symbol, position, trade_count, lease_epoch)``
    against ``trades`` rows ``(engine_id, seq, fill_id, side, qty, position_after, runner,
    epoch)``: the position is the net of the fills, ``trade_count`` their number, ``seq``
    runs 1..n, no fill id twice, and the fills of one engine come from one runner at a
    time (a lease epoch belongs to one runner, and epochs never go back as ``seq`` grows)."""
    by_engine: dict[int, list[tuple]] = defaultdict(list)
    for row in trades:
        by_engine[row[0]].append(row)
    problems = [
        f"fill id {fill_id} stored {n} times"
        for fill_id, n in Counter(row[2] for row in trades).items()
        if n > 1
    ]
    for engine_id, symbol, position, trade_count, lease_epoch in engines:
        fills = sorted(by_engine.pop(engine_id, []), key=lambda row: row[1])
        problems += [f"{symbol}: {p}" for p in _engine_problems(position, trade_count, fills)]
        if fills and fills[-1][7] > lease_epoch:
            problems.append(f"{symbol}: a fill of epoch {fills[-1][7]} > lease {lease_epoch}")
    problems += [f"fills of a missing engine {engine_id}" for engine_id in by_engine]
    return problems


def _engine_problems(position: float | None, trade_count: int, fills: list[tuple]) -> list[str]:
    problems = []
    seqs = [row[1] for row in fills]
    if seqs != list(range(1, len(fills) + 1)):
        problems.append(f"seq is not 1..{len(fills)}: {_gaps(seqs)}")
    if trade_count != len(fills):
        problems.append(f"trade_count {trade_count} but {len(fills)} Trade rows")
    net = 0.0
    for _, seq, _, side, qty, position_after, _, _ in fills:
        net += qty if side == "buy" else -qty
        if abs(position_after - net) > TOLERANCE:
            problems.append(f"seq {seq}: position_after {position_after} but fills net {net}")
            break
    if abs((position or 0.0) - net) > TOLERANCE:
        problems.append(f"position {position} but fills net {net}")
    problems += _writer_problems(fills)
    return problems


def _writer_problems(fills: list[tuple]) -> list[str]:
    """Fills of two runners interleaved: an epoch written by two runners, or an older
    epoch after a newer one."""
    problems, owner_of, newest = [], {}, None
    for _, seq, _, _, _, _, runner, epoch in fills:
        if owner_of.setdefault(epoch, runner) != runner:
            problems.append(f"seq {seq}: epoch {epoch} of {owner_of[epoch]!r} also by {runner!r}")
        if newest is not None and epoch < newest[1]:
            problems.append(
                f"seq {seq}: {runner!r} epoch {epoch} after {newest[0]!r} epoch {newest[1]}"
            )
        else:
            newest = (runner, epoch)
    return problems


def _gaps(seqs: list[int]) -> str:
    doubled = sorted(seq for seq, n in Counter(seqs).items() if n > 1)
    missing = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
    return f"doubled {doubled[:10]}, missing {missing[:10]}"
