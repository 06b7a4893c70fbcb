"""The shipped candles: synthetic and said so, several symbols, months of one-minute
candles, under 5 MB, and written again byte for byte by their generator."""

from __future__ import annotations

from benchmarks import synthetic
from engines_app.runtime.candles import read_candles
from engines_app.runtime.feeds.replay import DATA_DIR, csv_files


def test_the_shipped_candles_are_synthetic_months_of_several_symbols_under_5_mb():
    shipped = [name for name in csv_files() if name.startswith("synthetic_")]
    assert shipped == [synthetic.file_name(s) for s in sorted(synthetic.SYMBOLS)]
    assert sum((DATA_DIR / name).stat().st_size for name in csv_files()) < 5_000_000
    assert "**synthetic**" in (DATA_DIR / "README.md").read_text()
    for name in shipped:
        candles = read_candles(DATA_DIR / name)
        assert len(candles) == 61 * 1440  # two months of minutes
        steps = {b.open_time - a.open_time for a, b in zip(candles, candles[1:], strict=False)}
        assert steps == {60.0}
        assert all(c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high for c in candles)
        assert all(b.open == a.close for a, b in zip(candles, candles[1:], strict=False))


def test_the_generator_writes_the_same_bytes_again(tmp_path):
    path = tmp_path / "again.csv.gz"
    synthetic.write("BTCUSDT", path)
    assert path.read_bytes() == (DATA_DIR / synthetic.file_name("BTCUSDT")).read_bytes()
