"""The timer wheel the engines sleep on between cycles — no Django."""

import asyncio
import time

from engines_app.runtime import EngineConfig, EngineManager
from engines_app.runtime.ticker import Ticker
from tests.helpers import eventually


def count_timers(monkeypatch) -> list[float]:
    """The loop timers set from now on (``call_at``), by their due time."""
    loop, timers = asyncio.get_running_loop(), []
    call_at = loop.call_at

    def counting(when, callback, *args, **kwargs):
        timers.append(when)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    return timers


async def test_a_sleep_ends_after_its_delay_and_at_most_one_slot_later():
    ticker = Ticker(resolution=0.02, min_delay=0.05)
    for delay in (0.05, 0.1, 0.13):
        started = time.perf_counter()
        await ticker.sleep(delay)
        slept = time.perf_counter() - started
        assert delay <= slept < delay + 0.02 + 0.05  # a slot late at most (+ scheduling)


async def test_a_thousand_sleepers_share_a_few_loop_timers(monkeypatch):
    ticker = Ticker(resolution=0.01, min_delay=0.05)
    timers = count_timers(monkeypatch)
    sleepers = [asyncio.ensure_future(ticker.sleep(0.1)) for _ in range(1000)]
    await asyncio.gather(*sleepers)
    assert len(timers) <= 2  # one per 10 ms slot, where asyncio.sleep would set 1,000
    assert len(ticker) == 0


async def test_a_cancelled_sleeper_leaves_the_others_of_its_slot_asleep_then_awake():
    ticker = Ticker(resolution=0.05, min_delay=0.05)
    first, second = ticker.sleep(0.1), ticker.sleep(0.1)
    first.cancel()  # its engine was stopped
    await asyncio.sleep(0)
    assert not second.done()
    await asyncio.wait_for(second, 1)
    assert first.cancelled() and second.done() and not second.cancelled()


async def test_short_sleeps_are_plain_asyncio_sleeps(monkeypatch):
    ticker = Ticker(resolution=0.05, min_delay=0.05)
    started = time.perf_counter()
    await ticker.sleep(0.01)
    assert time.perf_counter() - started < 0.05  # not rounded up to a slot
    assert len(ticker) == 0


async def test_engines_of_a_manager_sleep_on_its_ticker(monkeypatch):
    m = EngineManager(stop_timeout=0.5)
    timers = count_timers(monkeypatch)
    m.start_all(EngineConfig(f"S{i:03d}USDT", cycle_interval=0.2) for i in range(200))
    await eventually(lambda: m.summary()["running"] == 200)
    await eventually(lambda: len(m.ticker) == 200)  # every engine asleep between cycles
    await asyncio.sleep(0.5)  # two cycles each
    assert all(engine.cycles >= 2 for _, engine in m.engines())
    assert len(timers) < 200  # 200 engines x 2 cycles would be 400 timers of their own
    await m.stop_all()
    assert m.summary()["stopped"] == 200


def test_a_ticker_used_again_under_a_new_loop_wakes_its_sleepers():
    ticker = Ticker(resolution=0.05, min_delay=0.05)

    async def leave_a_sleeper_behind():
        ticker.sleep(0.5)  # its loop ends before the slot is due

    async def sleep_once():
        await asyncio.wait_for(ticker.sleep(0.5), 2)

    asyncio.run(leave_a_sleeper_behind())
    asyncio.run(sleep_once())  # the same slot number, a timer on this loop
