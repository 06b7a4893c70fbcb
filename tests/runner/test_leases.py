"""Leases, one piece at a time: claims, the fence on every write, fill conflicts, the SQLite
lock and self-fencing. The multi-process scenarios are in ``test_multi_runner.py``."""

from __future__ import annotations

import os

import pytest
from django.utils import timezone

from engines_app.models import Engine, EngineCommand, EngineError, Trade
from engines_app.runner import store
from engines_app.runner.leases import (
    Identity,
    Leases,
    RunnerRefused,
    fair_share,
    fence_margin,
    hold_database,
)
from engines_app.runtime.events import ErrorRaised
from tests.helpers import T0, FakeClock, book_rows, heartbeat, hold

pytestmark = pytest.mark.django_db


def claimed(runner: str, **options) -> dict[str, int]:
    """Symbol -> epoch of what ``runner`` claims."""
    return {c.symbol: c.epoch for c in store.claim_engines(runner, lease=15.0, **options)}


def fence(runner: str, *engines: Engine, **options) -> store.Fence:
    """The fence of ``runner`` holding ``engines`` at their stored epochs."""
    epochs = {engine.pk: Engine.objects.get(pk=engine.pk).lease_epoch for engine in engines}
    return store.Fence(runner, epochs, **options)


def write(**rows) -> store.Written:
    return store.write(**({"statuses": [], "errors": [], "restarts": [], "heartbeats": []} | rows))


def beat(engine: Engine, position: float) -> store.HeartbeatRow:
    return store.HeartbeatRow(engine.pk, T0, 0, None, position, 0.0, 0.0, 0)


def test_a_claim_takes_free_engines_up_to_its_limit_and_bumps_their_epoch():
    for symbol in ("AAAUSDT", "BBBUSDT", "CCCUSDT"):
        Engine.objects.create(symbol=symbol)
    assert claimed("runner-a", limit=2) == {"AAAUSDT": 1, "BBBUSDT": 1}
    assert claimed("runner-b", limit=5) == {"CCCUSDT": 1}  # the others are held
    assert claimed("runner-b", limit=5) == {}


def test_an_expired_lease_is_claimed_by_another_runner_with_the_next_epoch(settings):
    engine = Engine.objects.create(symbol="BTCUSDT")
    hold([engine], "runner-a", seconds=-1)  # runner-a's lease ran out a second ago
    received = []

    def receiver(sender, takeovers=(), **kwargs):
        received.extend(takeovers)

    from engines_app.signals import engines_written

    engines_written.connect(receiver)
    try:
        assert claimed("runner-b", limit=1) == {"BTCUSDT": 2}
    finally:
        engines_written.disconnect(receiver)
    assert received == [{"runner": "runner-b", "previous": "runner-a", "symbols": ["BTCUSDT"]}]


def test_the_runner_holding_the_whole_database_claims_even_unexpired_leases():
    engine = Engine.objects.create(symbol="BTCUSDT")
    hold([engine], "killed-runner", seconds=15)  # a runner killed -9 a moment ago
    assert claimed("runner-b", limit=10) == {}
    assert claimed("runner-b", limit=10, exclusive=True) == {"BTCUSDT": 2}


def test_a_write_for_an_engine_another_runner_took_over_changes_nothing():
    btc, eth = Engine.objects.create(symbol="BTCUSDT"), Engine.objects.create(symbol="ETHUSDT")
    hold([btc, eth], "runner-a")
    old = fence("runner-a", btc, eth)
    hold([btc], "runner-b")  # taken over: new owner, new epoch
    _, rows = book_rows(btc, [("buy", 1.0, 100.0, T0)])
    error = store.error_row(btc.pk, ErrorRaised("BTCUSDT", T0, "X", "boom", "", False, False))

    written = write(
        heartbeats=[beat(btc, 5.0), beat(eth, 2.0)], books=rows, errors=[error], fence=old
    )

    assert written.lost == {btc.pk}
    assert Engine.objects.get(pk=btc.pk).position is None  # nothing of runner-a's landed
    assert not Trade.objects.exists() and not EngineError.objects.exists()
    assert Engine.objects.get(pk=eth.pk).position == 2.0  # its other engine is written


def test_a_lost_lease_is_also_found_by_the_renewal_and_an_older_epoch_is_a_lost_lease():
    btc = Engine.objects.create(symbol="BTCUSDT")
    hold([btc], "runner-a")
    stale = fence("runner-a", btc)
    hold([btc], "runner-a")  # runner-a itself claimed it again: the old epoch is fenced out
    written = write(fence=store.Fence("runner-a", stale.epochs, lease=15.0))
    assert written.lost == {btc.pk}


def test_the_renewal_extends_only_what_the_runner_runs():
    btc, eth = Engine.objects.create(symbol="BTCUSDT"), Engine.objects.create(symbol="ETHUSDT")
    hold([btc, eth], "runner-a", seconds=2)
    before = Engine.objects.get(pk=eth.pk).lease_expires_at
    write(fence=fence("runner-a", btc, lease=15.0))  # it gave ETHUSDT up (self-fenced)
    assert Engine.objects.get(pk=btc.pk).lease_expires_at > timezone.now() + timezone.timedelta(
        seconds=10
    )
    assert Engine.objects.get(pk=eth.pk).lease_expires_at == before


def test_a_release_gives_the_lease_up_after_the_engines_last_rows():
    btc = Engine.objects.create(symbol="BTCUSDT")
    hold([btc], "runner-a")
    row = store.StatusRow(btc.pk, "stopped", "handed over", None, 0, None, None, 0, None)
    write(statuses=[row], fence=fence("runner-a", btc, release=frozenset({btc.pk})))
    btc.refresh_from_db()
    assert (btc.status, btc.lease_owner, btc.lease_expires_at) == ("stopped", "", None)
    assert btc.lease_epoch == 1  # kept: the next claim makes epoch 2


def test_fills_carry_their_runner_and_epoch_and_a_retried_write_does_not_double_them():
    btc = Engine.objects.create(symbol="BTCUSDT")
    hold([btc], "runner-a")
    _, rows = book_rows(btc, [("buy", 1.0, 100.0, T0), ("sell", 1.0, 101.0, T0 + 1)])
    write(books=rows, fence=fence("runner-a", btc))
    written = write(books=rows, fence=fence("runner-a", btc))  # its commit's answer was lost
    assert written.conflicts == {} and written.lost == set()
    assert list(Trade.objects.order_by("seq").values_list("seq", "runner", "epoch")) == [
        (1, "runner-a", 1),
        (2, "runner-a", 1),
    ]


def test_a_fill_taking_a_stored_fills_sequence_number_is_a_conflict_never_skipped():
    btc = Engine.objects.create(symbol="BTCUSDT")
    hold([btc], "runner-a")
    _, first = book_rows(btc, [("buy", 1.0, 100.0, T0)])
    write(books=first, fence=fence("runner-a", btc))
    _, other = book_rows(btc, [("sell", 2.0, 90.0, T0 + 5)])  # another fill with seq 1
    written = write(books=other, heartbeats=[beat(btc, -2.0)], fence=fence("runner-a", btc))
    assert btc.pk in written.conflicts and "seq 1" in written.conflicts[btc.pk]
    assert list(Trade.objects.values_list("side", "qty")) == [("buy", 1.0)]
    assert Engine.objects.get(pk=btc.pk).position == 1.0  # nothing of the clash landed


def test_an_ack_is_written_by_the_holder_only_and_names_it():
    btc = Engine.objects.create(symbol="BTCUSDT")
    hold([btc], "runner-a")
    command = EngineCommand.objects.create(engine=btc, symbol="BTCUSDT", action="restart")
    ack = store.Ack(command.pk, "done", "restarted", btc.pk)
    write(acks=[ack], fence=store.Fence("runner-b", {btc.pk: 1}))
    assert EngineCommand.objects.get(pk=command.pk).acked_at is None
    write(acks=[ack], fence=fence("runner-a", btc))
    command.refresh_from_db()
    assert (command.outcome, command.acked_by) == ("done", "runner-a")


def test_commands_reach_the_runner_holding_their_engine():
    btc, eth = Engine.objects.create(symbol="BTCUSDT"), Engine.objects.create(symbol="ETHUSDT")
    hold([btc], "runner-a")
    hold([eth], "runner-b")
    for engine in (btc, eth):
        EngineCommand.objects.create(engine=engine, symbol=engine.symbol, action="stop")
    EngineCommand.objects.create(engine=None, symbol="XRPUSDT", action="remove")
    assert [c.symbol for c in store.pending_commands("runner-a")] == ["BTCUSDT", "XRPUSDT"]
    assert [c.symbol for c in store.pending_commands("runner-b")] == ["ETHUSDT", "XRPUSDT"]


def test_a_second_runner_with_a_live_runners_name_is_refused():
    heartbeat("runner-a", host="host-1", pid=10)
    why = store.runner_in_use("runner-a", within=15.0, host="host-2", pid=20)
    assert "runner-a" in why and "pid 10 on host-1" in why
    assert store.runner_in_use("runner-a", within=15.0, host="host-1", pid=10) is None
    assert store.runner_in_use("runner-b", within=15.0, host="host-2", pid=20) is None


def test_a_runner_restarted_after_a_kill_takes_its_name_back_at_once():
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead_pid = int(gone.stdout)  # a process of this host that has ended
    heartbeat("runner-a", host="host-1", pid=dead_pid)
    assert store.runner_in_use("runner-a", within=15.0, host="host-1", pid=99) is None
    heartbeat("runner-a", host="host-1", pid=os.getpid())  # alive: still refused
    assert store.runner_in_use("runner-a", within=15.0, host="host-1", pid=99) is not None


def test_a_second_runner_on_one_sqlite_database_is_refused_naming_the_first(tmp_path):
    database = str(tmp_path / "db.sqlite3")
    first = Identity("runner-a", "host-1", 10)
    with hold_database(database, first):
        with (
            pytest.raises(RunnerRefused) as refused,
            hold_database(database, Identity("b", "h", 1)),
        ):
            pass
    message = str(refused.value)
    assert "runner runner-a (pid 10 on host-1) since" in message and "PostgreSQL" in message
    with hold_database(database, Identity("b", "h", 1)):  # released when the first ended
        pass


def test_a_runner_that_cannot_renew_fences_itself_before_its_lease_can_expire():
    clock = FakeClock(100.0)
    leases = Leases(Identity("runner-a", "h", 1), lease=15.0, margin=3.0, monotonic=clock)
    assert not leases.must_fence()  # holds nothing
    leases.claimed(1, 1, at=100.0)
    clock.now = 111.9
    assert not leases.must_fence()
    clock.now = 112.0  # 3 s before the lease can expire elsewhere
    assert leases.must_fence()
    leases.renewed(at=111.0)
    assert not leases.must_fence()


def test_the_fair_share_and_the_fence_margin():
    assert [fair_share(40, n) for n in (1, 2, 3)] == [40, 20, 14]
    assert fair_share(5, 0) == 5
    assert fence_margin(15.0, 0.25) == 3.0 and fence_margin(1.0, 0.25) == 0.5


def test_a_lease_shorter_than_three_flushes_or_polls_is_a_settings_error(settings):
    from engines_app import conf

    settings.LEVIPANEL = settings.LEVIPANEL | {"LEASE": 2.0, "FLUSH_INTERVAL": 1.0}
    assert any(
        problem.startswith("LEVIPANEL_LEASE: must be at least 3") for problem in conf.problems()
    )
    settings.LEVIPANEL = settings.LEVIPANEL | {"LEASE": 3.0}
    assert not any("LEVIPANEL_LEASE" in problem for problem in conf.problems())


def test_rows_of_an_engine_removed_meanwhile_are_dropped_not_a_database_error():
    btc, eth = Engine.objects.create(symbol="BTCUSDT"), Engine.objects.create(symbol="ETHUSDT")
    hold([btc, eth], "runner-a")
    held = fence("runner-a", btc, eth, lease=15.0)
    _, rows = book_rows(btc, [("buy", 1.0, 100.0, T0)])  # a fill on its way
    error = store.error_row(btc.pk, ErrorRaised("BTCUSDT", T0, "X", "boom", "", False, False))
    Engine.objects.filter(pk=btc.pk).delete()  # an operator removed it
    written = write(books=rows, errors=[error], heartbeats=[beat(eth, 3.0)], fence=held)
    assert written.lost == {btc.pk}
    assert Engine.objects.get(pk=eth.pk).position == 3.0  # the rest is written


@pytest.mark.django_db(transaction=True)
async def test_a_lease_lost_during_start_up_stops_that_engine_not_the_runner(tmp_path, monkeypatch):
    from engines_app.runner.lifecycle import Runner
    from engines_app.services import engines as services
    from tests.helpers import db, eventually, fast_settings, running

    await db(services.engine_add, symbol="BTCUSDT")
    await db(services.engine_add, symbol="ETHUSDT")
    real_claim = store.claim_engines

    def claim_then_lose_btc(runner, **options):
        claims = real_claim(runner, **options)
        # Another runner takes BTCUSDT over before this one's first write (a slow start).
        Engine.objects.filter(symbol="BTCUSDT").update(
            lease_owner="other", lease_epoch=99, lease_expires_at=timezone.now()
        )
        return claims

    monkeypatch.setattr(store, "claim_engines", claim_then_lose_btc)
    runner = Runner(settings=fast_settings(tmp_path / "logs", symbols=[]), symbols=None)
    async with running(runner):
        await eventually(lambda: runner.manager.is_alive("ETHUSDT"))
        await eventually(lambda: runner.manager.status_of("BTCUSDT") is None)
        assert len(runner.leases) == 1


@pytest.mark.django_db(transaction=True)
async def test_a_runner_among_several_claims_its_share_batch_after_batch_not_a_batch_a_poll(
    tmp_path, monkeypatch
):
    from engines_app.runner import reconciler
    from engines_app.runner.lifecycle import Runner
    from tests.helpers import db, eventually, fast_settings, running

    monkeypatch.setattr(reconciler, "CLAIM_BATCH", 4)
    symbols = [f"C{i:03d}USDT" for i in range(18)]
    await db(Engine.objects.bulk_create, [Engine(symbol=s) for s in symbols])
    runner = Runner(settings=fast_settings(tmp_path / "logs", symbols=[]), symbols=None)
    runner.exclusive = runner.reconciler.exclusive = False  # claims as on PostgreSQL
    async with running(runner):
        await eventually(lambda: len(runner.leases) == 18)
        # The start-up's claim, then the first poll's, batch after batch: 4 + 4 + 4 + 4 + 2.
        assert runner.reconciler.polls <= 1
        await eventually(lambda: all(runner.manager.is_alive(s) for s in symbols))
