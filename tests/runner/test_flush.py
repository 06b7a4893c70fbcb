"""The heartbeat flush, as the store writes it: beats grouped by their grain, values only
where they changed, leases renewed in the same statements, and a fleet found by its owner."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from engines_app.models import Engine
from engines_app.runner import store
from tests.helpers import T0, hold

pytestmark = pytest.mark.django_db


def write(fence: store.Fence | None = None, **rows) -> store.Written:
    empty = {"statuses": [], "errors": [], "restarts": [], "heartbeats": []}
    return store.write(**(empty | rows), fence=fence)


def beat(engine: Engine, at: float, position: float | None = 1.0, **fields) -> store.HeartbeatRow:
    return store.HeartbeatRow(engine.pk, at, 0, None, position, 2.0, 3.0, 4, at, **fields)


def engines(n: int) -> list[Engine]:
    return Engine.objects.bulk_create([Engine(symbol=f"E{i:04d}USDT") for i in range(n)])


def fence_of(runner: str, rows: list[Engine], **options) -> store.Fence:
    epochs = dict(
        Engine.objects.filter(pk__in=[e.pk for e in rows]).values_list("id", "lease_epoch")
    )
    return store.Fence(runner, epochs, **options)


def test_a_beat_is_stored_at_the_start_of_its_grain_never_later():
    (engine,) = engines(1)
    at = T0 + 12.37
    write(heartbeats=[beat(engine, at)])
    stored = Engine.objects.get(pk=engine.pk)
    assert at - store.BEAT_GRAIN < stored.last_heartbeat.timestamp() <= at
    assert stored.last_tick_at == stored.last_heartbeat
    assert (stored.position, stored.daily_pnl, stored.total_pnl, stored.trade_count) == (
        1.0,
        2.0,
        3.0,
        4,
    )


def test_an_unchanged_row_gets_its_beat_and_keeps_its_values():
    (engine,) = engines(1)
    write(heartbeats=[beat(engine, T0)])
    Engine.objects.filter(pk=engine.pk).update(daily_pnl=99.0)  # someone else wrote it
    write(heartbeats=[dataclasses.replace(beat(engine, T0 + 5), daily_pnl=7.0, changed=False)])
    stored = Engine.objects.get(pk=engine.pk)
    assert stored.last_heartbeat.timestamp() == pytest.approx(T0 + 5, abs=store.BEAT_GRAIN)
    assert stored.daily_pnl == 99.0  # an unchanged row's values are not written again
    write(heartbeats=[beat(engine, T0 + 6, position=None)])  # changed: written whole
    stored = Engine.objects.get(pk=engine.pk)
    assert (stored.position, stored.daily_pnl) == (None, 2.0)


def test_a_silent_feed_keeps_the_last_tick():
    (engine,) = engines(1)
    write(heartbeats=[beat(engine, T0)])
    silent = dataclasses.replace(beat(engine, T0 + 30), last_tick_at=None)
    write(heartbeats=[silent])
    stored = Engine.objects.get(pk=engine.pk)
    assert stored.last_tick_at.timestamp() == pytest.approx(T0, abs=store.BEAT_GRAIN)
    assert stored.last_heartbeat.timestamp() == pytest.approx(T0 + 30, abs=store.BEAT_GRAIN)


def test_a_fleet_of_beats_is_a_few_statements_whatever_its_size():
    rows = engines(2000)
    hold(rows, "runner-a")
    fence = fence_of("runner-a", rows, lease=15.0)
    beats = [
        dataclasses.replace(beat(e, T0 + i % 7 * 0.01), changed=False) for i, e in enumerate(rows)
    ]
    with CaptureQueriesContext(connection) as queries:
        written = write(fence, heartbeats=beats)
    assert written.lost == set()
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    # The beats of one grain: one statement per list of ids the backend takes at once.
    assert len(updates) == len(list(store._chunks(list(range(2000)))))
    assert Engine.objects.filter(last_heartbeat__isnull=False).count() == 2000


def test_a_renewal_extends_the_leases_of_the_engines_held_beating_or_not():
    rows = engines(3)
    hold(rows, "runner-a", seconds=2)
    given_up = rows[2]  # self-fenced: no longer in the runner's epochs
    fence = fence_of("runner-a", rows[:2], lease=15.0)
    before = Engine.objects.get(pk=given_up.pk).lease_expires_at
    write(fence, heartbeats=[beat(rows[0], T0)])  # rows[1] is hung: no beat
    soon = timezone.now() + timedelta(seconds=10)
    assert Engine.objects.get(pk=rows[0].pk).lease_expires_at > soon
    assert Engine.objects.get(pk=rows[1].pk).lease_expires_at > soon
    assert Engine.objects.get(pk=given_up.pk).lease_expires_at == before


def test_a_write_without_renewal_leaves_the_leases_alone():
    rows = engines(2)
    hold(rows, "runner-a", seconds=2)
    before = {e.pk: e.lease_expires_at for e in Engine.objects.all()}
    write(fence_of("runner-a", rows), heartbeats=[beat(rows[0], T0)])
    assert {e.pk: e.lease_expires_at for e in Engine.objects.all()} == before


def test_a_large_fence_finds_the_engines_it_lost_among_many():
    rows = engines(FEW := store.FEW_IDS + 10)
    hold(rows, "runner-a")
    fence = fence_of("runner-a", rows, lease=15.0)
    hold(rows[:3], "runner-b")  # taken over meanwhile
    written = write(fence, heartbeats=[beat(e, T0) for e in rows])
    assert written.lost == {e.pk for e in rows[:3]}
    assert Engine.objects.filter(last_heartbeat__isnull=False).count() == FEW - 3


def test_ticks_on_schedules_of_their_own_are_stored_each_at_its_grain():
    rows = engines(store.MAX_GROUPS + 20)
    ticked = {e.pk: T0 - 100 + i for i, e in enumerate(rows)}  # one grain each
    beats = [dataclasses.replace(beat(e, T0), last_tick_at=ticked[e.pk]) for e in rows]
    write(heartbeats=beats)
    for engine in Engine.objects.all():
        assert engine.last_tick_at.timestamp() == pytest.approx(ticked[engine.pk], abs=0.1)
        assert engine.last_heartbeat.timestamp() == pytest.approx(T0, abs=0.1)


# Engines in step with their runner's flushes (``HeartbeatRow.in_step``) --------------------


def runner_row(name: str, beats_since: float, **fields) -> store.RunnerRow:
    return store.RunnerRow(name, T0, 1, {}, beats_since=beats_since, **fields)


def shown(engine: Engine) -> tuple[float, bool]:
    found = Engine.objects.with_heartbeat().get(pk=engine.pk)
    return found.heartbeat.timestamp(), found.beats_with_runner


def in_step(runner: str = "runner-a", n: int = 1) -> list[Engine]:
    """Engines ``runner`` holds, written in step at ``T0``; its row carries ``T0 + 30``."""
    rows = engines(n)
    hold(rows, runner)
    beats = [beat(e, T0, in_step=True) for e in rows]
    write(fence_of(runner, rows), heartbeats=beats, runner=runner_row(runner, T0 + 30))
    return rows


def test_an_engine_in_step_shows_its_runners_beat_until_it_changes_hands():
    (a,) = in_step()
    assert shown(a) == (pytest.approx(T0 + 30), True)
    assert Engine.objects.get(pk=a.pk).last_heartbeat.timestamp() == pytest.approx(T0, abs=0.1)
    hold([a], "runner-b", seconds=-1)  # the lease ran out
    (claim,) = store.claim_engines("runner-b", limit=1, lease=15.0)
    assert claim.id == a.pk
    # Out of step, with the beat it showed stored: runner-b's row does not carry it.
    assert shown(a) == (pytest.approx(T0 + 30), False)
    write(fence_of("runner-b", [a]), runner=runner_row("runner-b", T0 + 90))
    assert shown(a) == (pytest.approx(T0 + 30), False)


def test_a_release_a_status_and_a_runners_first_flush_take_engines_out_of_step():
    released, stopped, left = in_step(n=3)
    fence = fence_of("runner-a", [released, stopped], release=frozenset({released.pk}))
    status = store.StatusRow(stopped.pk, "stopped", "", None, 0, 5, None, 0, None)
    write(fence, statuses=[dataclasses.replace(status, last_heartbeat=T0 + 29)])
    assert shown(released) == (pytest.approx(T0 + 30), False)
    # And its last tick, which the runner's row vouched for the same way.
    assert Engine.objects.get(pk=released.pk).last_tick_at.timestamp() == pytest.approx(T0 + 30)
    assert shown(stopped) == (pytest.approx(T0 + 29), False)  # its own last beat
    assert shown(left) == (pytest.approx(T0 + 30), True)
    # The same runner's name, begun again: its rows left in step are not carried any more.
    write(fence_of("runner-a", [left]), runner=runner_row("runner-a", T0 + 60, first=True))
    assert shown(left) == (pytest.approx(T0 + 30), False)


def test_a_flush_of_engines_in_step_writes_only_the_runners_row():
    rows = in_step(n=500)
    fence = fence_of("runner-a", rows)
    with CaptureQueriesContext(connection) as queries:
        write(fence, runner=runner_row("runner-a", T0 + 31))
    table = Engine._meta.db_table
    assert [q["sql"] for q in queries.captured_queries if table in q["sql"]] == []
    assert [shown(e) for e in rows[:3]] == [(pytest.approx(T0 + 31), True)] * 3


def test_engines_given_up_are_taken_out_of_step_where_the_runner_still_owns_them():
    given_up, taken = in_step(n=2)
    hold([taken], "runner-b")  # claimed meanwhile: runner-b's now, not runner-a's to touch
    Engine.objects.filter(pk=taken.pk).update(beats_with_runner=True)
    write(store.Fence("runner-a", {}), unstep={given_up.pk, taken.pk})
    assert shown(given_up) == (pytest.approx(T0 + 30), False)
    assert Engine.objects.get(pk=taken.pk).beats_with_runner
