"""The writer's PnL samples for the detail page's chart: taken from the running engines with a
heartbeat flush, once per sample interval, in the flush's own transaction."""

from __future__ import annotations

import pytest

from engines_app.models import Engine, EnginePnlSample
from engines_app.runner import store
from engines_app.runner.lifecycle import Runner
from engines_app.services import engines as services
from tests.helpers import ShiftedClock, db, eventually, fast_settings, running

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def writes(monkeypatch) -> list[dict]:
    """What each ``store.write`` was given (it still writes)."""
    calls: list[dict] = []
    real_write = store.write

    def write(**kwargs) -> store.Written:
        written = real_write(**kwargs)
        calls.append(kwargs)
        return written

    monkeypatch.setattr(store, "write", write)
    return calls


def sampled(writes: list[dict]) -> list[list[store.PnlSampleRow]]:
    return [call["pnl_samples"] for call in writes if call.get("pnl_samples")]


async def sample_counts() -> dict[str, int]:
    rows = EnginePnlSample.objects.values_list("engine__symbol", flat=True)
    symbols = await db(lambda: list(rows))
    return {symbol: symbols.count(symbol) for symbol in set(symbols)}


async def test_running_engines_are_sampled_with_a_heartbeat_flush_once_per_interval(
    tmp_path, settings, writes
):
    settings.LEVIPANEL_PNL_SAMPLE_INTERVAL = 30.0
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        await db(services.engine_add, symbol=symbol)
    await db(services.engine_add, symbol="ADAUSDT", desired_state="stopped")
    clock = ShiftedClock()
    runner = Runner(settings=fast_settings(tmp_path / "logs"), clock=clock)
    async with running(runner):
        await eventually(lambda: sampled(writes))
        flushes = len(writes)
        await eventually(lambda: len(writes) >= flushes + 3)  # heartbeat flushes go on
        assert await sample_counts() == {"BTCUSDT": 1, "ETHUSDT": 1, "SOLUSDT": 1}
        assert len(sampled(writes)) == 1

        clock.offset = 31.0  # the next sample is due (engines are not taken for hung yet)
        await eventually(lambda: len(sampled(writes)) == 2)
        assert await sample_counts() == {"BTCUSDT": 2, "ETHUSDT": 2, "SOLUSDT": 2}
    ids = await db(lambda: dict(Engine.objects.values_list("id", "symbol")))
    for call in writes:
        if not call.get("pnl_samples"):
            continue
        # One transaction: the samples ride with a heartbeat flush, and are the engines'
        # own numbers at that moment, as the heartbeat rows beside them say.
        assert call["runner"] is not None  # a heartbeat flush
        assert {ids[row.id] for row in call["pnl_samples"]} == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
        beats = {row.id: (row.daily_pnl, row.total_pnl) for row in call["heartbeats"]}
        for row in call["pnl_samples"]:
            assert beats.get(row.id, (row.daily_pnl, row.total_pnl)) == (
                row.daily_pnl,
                row.total_pnl,
            )


async def test_no_samples_when_the_interval_is_zero(tmp_path, settings, writes):
    settings.LEVIPANEL_PNL_SAMPLE_INTERVAL = 0
    async with running(Runner(settings=fast_settings(tmp_path / "logs"))):
        await eventually(lambda: sum(bool(call["heartbeats"]) for call in writes) >= 3)
    assert sampled(writes) == []
    assert await db(EnginePnlSample.objects.count) == 0


def flushes(writes: list[dict]) -> list[dict]:
    """The heartbeat flushes among the writes (they carry the runner's row)."""
    return [call for call in writes if call["runner"] is not None]


def shown(symbol: str) -> tuple[float, float, bool]:
    """The engine's shown heartbeat, its stored one, and whether it beats with its runner."""
    engine = Engine.objects.with_heartbeat().get(symbol=symbol)
    return engine.heartbeat.timestamp(), engine.last_heartbeat.timestamp(), engine.beats_with_runner


async def test_an_engine_in_step_is_written_once_then_its_runners_row_carries_its_beats(
    tmp_path, writes
):
    # stop_entries: the engine never opens a position, so its values stand still.
    await db(services.engine_add, symbol="BTCUSDT", config={"stop_entries": True})
    engine_id = await db(lambda: Engine.objects.get(symbol="BTCUSDT").pk)
    async with running(Runner(settings=fast_settings(tmp_path / "logs"))) as runner:
        await eventually(lambda: beats_of(writes, engine_id))
        first = len(flushes(writes))
        await eventually(lambda: len(flushes(writes)) >= first + 8)
        beat, stored, with_runner = await db(shown, "BTCUSDT")
        engine = runner.manager.engine_of("BTCUSDT")
        assert with_runner
        # Shown: the runner's last flush; never later than the engine's own beat.
        assert engine.last_heartbeat - 0.5 < beat <= engine.last_heartbeat
        assert stored < beat  # the engine's row was not written for these beats
    rows = beats_of(writes, engine_id)
    assert rows[0].changed and rows[0].in_step  # written whole, as it came into step
    # Then nothing, but on the row's refresh turn (one flush in REFRESH_FLUSHES).
    later = [row for call in flushes(writes)[first : first + 8] for row in call["heartbeats"]]
    assert len(later) <= 1
    carried = [call["runner"].beats_since for call in flushes(writes)[first : first + 8]]
    assert carried == sorted(carried) and len(set(carried)) == len(carried)
    # Released as the runner stopped: the engine's own last beat is on its row again,
    # stored at the start of its grain (never later than the beat), so within a grain
    # of the last beat its runner carried, or after it.
    beat, stored, with_runner = await db(shown, "BTCUSDT")
    assert not with_runner and beat == stored >= carried[-1] - store.BEAT_GRAIN


async def test_a_hung_engine_falls_out_of_step_and_shows_its_own_last_beat(tmp_path, writes):
    await db(services.engine_add, symbol="BTCUSDT", config={"hang_after_cycles": 5})
    await db(services.engine_add, symbol="ETHUSDT")  # beats on: the runner's row moves
    hung_id = await db(lambda: Engine.objects.get(symbol="BTCUSDT").pk)
    settings = fast_settings(tmp_path / "logs", symbols=["BTCUSDT", "ETHUSDT"])
    async with running(Runner(settings=settings)) as runner:
        await eventually(lambda: any(not row.in_step for row in beats_of(writes, hung_id)[1:]))
        hung = runner.manager.engine_of("BTCUSDT").last_heartbeat
        out = [row for row in beats_of(writes, hung_id) if not row.in_step][-1]
        assert out.last_heartbeat == hung
        first = len(flushes(writes))
        await eventually(lambda: len(flushes(writes)) >= first + 5)
        beat, stored, with_runner = await db(shown, "BTCUSDT")
        assert not with_runner and beat == stored == pytest.approx(hung, abs=store.BEAT_GRAIN)
        assert flushes(writes)[-1]["runner"].beats_since > hung + 0.2  # ETHUSDT's go on
        assert await db(lambda: shown("ETHUSDT")[0]) > hung + 0.2


def beats_of(writes: list[dict], engine_id: int) -> list[store.HeartbeatRow]:
    return [row for call in writes for row in call["heartbeats"] if row.id == engine_id]


async def test_a_row_changed_by_another_writer_is_written_whole_again(tmp_path, monkeypatch):
    from engines_app.runner import writer

    monkeypatch.setattr(writer, "REFRESH_FLUSHES", 5)  # 0.5 s of 0.1 s flushes
    await db(services.engine_add, symbol="BTCUSDT", config={"stop_entries": True})
    rows = Engine.objects.filter(symbol="BTCUSDT")
    async with running(Runner(settings=fast_settings(tmp_path / "logs"))):
        await eventually(lambda: db(lambda: rows.get().last_heartbeat is not None))
        await db(lambda: rows.update(error_count=99, daily_pnl=12.5))  # not the runner's
        await eventually(
            lambda: db(lambda: rows.values_list("error_count", "daily_pnl").get() == (0, 0.0)),
            timeout=5,
        )


async def test_an_engine_given_up_in_step_is_taken_out_of_step_by_its_owner(tmp_path, writes):
    """Fenced itself (say, cut off from the database): the engine is abandoned and its rows
    are the fence's to drop, yet the runner's row must stop vouching for its beats."""
    for symbol in ("BTCUSDT", "ETHUSDT"):
        await db(services.engine_add, symbol=symbol, config={"stop_entries": True})
    settings = fast_settings(tmp_path / "logs", symbols=["BTCUSDT", "ETHUSDT"])
    async with running(Runner(settings=settings)) as runner:
        await eventually(
            lambda: db(lambda: Engine.objects.filter(beats_with_runner=True).count() == 2)
        )
        btc = await db(lambda: Engine.objects.get(symbol="BTCUSDT").pk)
        runner.reconciler.lost({btc}, "given up in a test")
        await eventually(lambda: db(lambda: not shown("BTCUSDT")[2]), timeout=5)
        beat, stored, _ = await db(shown, "BTCUSDT")
        assert beat == stored <= runner.writer._beats_floor + 2  # its own, as it last showed
        first = len(flushes(writes))
        await eventually(lambda: len(flushes(writes)) >= first + 3)
        assert await db(lambda: shown("BTCUSDT")[0]) == beat  # no longer carried
        assert await db(lambda: shown("ETHUSDT")[2])  # the other one still is
