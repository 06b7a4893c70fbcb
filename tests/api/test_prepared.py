"""The hot reads compiled once (``Prepared``): the ORM's own rows, without building the
query on every call."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engines_app.models import Engine, RunnerHeartbeat
from engines_app.selectors.engines import BROKER_FIELDS, STATUS_FIELDS, engine_status_of
from engines_app.selectors.prepared import Prepared

pytestmark = pytest.mark.django_db


def _status_query(symbol):
    return Engine.objects.filter(symbol=symbol).values(*STATUS_FIELDS, **BROKER_FIELDS)


def test_a_prepared_read_gives_the_orms_rows_with_new_values_each_call():
    beat = datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=UTC)
    config = {"broker": "live", "feed_options": {"exchange": "kraken"}}
    Engine.objects.create(symbol="BTCUSDT", last_heartbeat=beat, total_pnl="12.5", config=config)
    Engine.objects.create(symbol="ETHUSDT")
    builds = []

    def build(symbol):
        builds.append(symbol)
        return _status_query(symbol)

    prepared = Prepared(build)
    for symbol in ("BTCUSDT", "ETHUSDT", "NOPEUSDT", "BTCUSDT"):
        assert prepared.rows(symbol) == list(_status_query(symbol))
    assert len(builds) == 1  # compiled once
    row = prepared.rows("BTCUSDT")[0]
    assert row["last_heartbeat"] == beat and row["exchange"] == "kraken"  # converted


def test_an_argument_the_sql_does_not_get_as_it_is_is_refused():
    """``contains`` wraps the value in wildcards: the compiled SQL would not take it."""
    with pytest.raises(ValueError, match="one parameter"):
        Prepared(lambda part: Engine.objects.filter(symbol__contains=part).values()).rows("B")
    with pytest.raises(TypeError, match="values"):
        Prepared(lambda symbol: Engine.objects.filter(symbol=symbol)).rows("BTCUSDT")


def test_one_engines_status_shows_its_runners_beat_and_rows_written_after_a_first_read():
    assert engine_status_of("BTCUSDT") is None  # nothing found (and both reads compiled)
    now = datetime.now(UTC).replace(microsecond=0)
    RunnerHeartbeat.objects.create(name="r1", started_at=now, last_seen=now, beats_since=now)
    Engine.objects.create(
        symbol="BTCUSDT", status="running", lease_owner="r1", beats_with_runner=True
    )
    shown = engine_status_of("BTCUSDT")
    assert shown["symbol"] == "BTCUSDT"
    assert shown["last_heartbeat"] == now.timestamp()  # the runner's beat, read with it
    assert shown["runner_last_seen"] == now.timestamp()
