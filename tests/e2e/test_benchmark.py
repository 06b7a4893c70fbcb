"""The benchmark command must not rot: a tiny run prints every figure beside a baseline."""

from __future__ import annotations

import json
import math
import tracemalloc

import pytest
from django.core.management import CommandError, call_command

from benchmarks import Section, chosen, run_section, verdict
from benchmarks.report import number
from benchmarks.soak import growing_sites, rss_marks
from engines_app.testing import Installation

ENGINES = 20
FIGURES = [
    "start-up: 20 engines running",
    "event-loop lag p99, 20 engines",
    "RSS per engine",
    "DB write transactions/s (counted by SQLite)",
    "DB write transactions/s (runner's counter)",
    "one flush of 20 heartbeats, the runner's own",
    "the slowest of those flushes",
    "one flush that renews 20 leases, the runner's own",
    "one flush of 20 beats written on their rows",
    "one flush of 20 heartbeats, every row's PnL changed (median)",
    "reconcile poll of 20 control rows (median)",
    "crash seen -> in the database p99",
    "restart due -> running in the database p99",
    "runner CPU, 20 engines",
    "crash -> detected p99",
    "crash -> running again, beyond backoff p99",
]


def is_number(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.mark.postgres
def test_tiny_run_on_postgresql_prints_the_runner_figures(project, postgres_url):
    out = project.data_dir / "bench-pg.json"
    args = ["--engines", str(ENGINES), "--seconds", "1", "--only", "startup-pg", "steady-pg"]
    project.manage("benchmark", *args, "--json", str(out), timeout=180)
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    on_sqlite_only = ("counted by SQLite", "crash ->")
    for figure in FIGURES:
        if any(part in figure for part in on_sqlite_only):
            continue
        name = next((n for n in rows if n.startswith(figure) and n.endswith("(PostgreSQL)")), None)
        assert name is not None, f"{figure!r} on PostgreSQL missing from {sorted(rows)}"
        assert is_number(rows[name]["value"]) and is_number(rows[name]["baseline"]), rows[name]


def test_tiny_run_prints_every_figure_beside_a_baseline(project):
    out = project.data_dir / "bench.json"
    done = project.manage(
        "benchmark",
        "--engines",
        str(ENGINES),
        "--seconds",
        "1",
        "--only",
        "startup",
        "steady",
        "crash",
        "--json",
        str(out),
        timeout=120,
    )
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    for figure in FIGURES:
        row = next((r for name, r in rows.items() if name.startswith(figure)), None)
        assert row is not None, f"{figure!r} missing from {sorted(rows)}"
        assert is_number(row["value"]) and is_number(row["baseline"]), row
        assert row["baseline_name"] and row["unit"], row
        line = next(line for line in done.stdout.splitlines() if line.startswith(row["name"]))
        # value and baseline are printed; the ratio may be n/a when a tiny baseline is 0
        assert f"{number(row['value'])} {row['unit']}" in line, line
        assert f"{number(row['baseline'])} {row['unit']}" in line, line
    assert "error:" not in done.stdout
    # The transaction counter works at the database: one autocommit save per engine is
    # one transaction each, and the runner's batched writes are seen too.
    saves = rows["DB write transactions/s (counted by SQLite)"]
    assert saves["baseline"] == ENGINES
    assert saves["value"] > 0


def test_a_short_soak_reports_memory_lag_recovery_and_writes(project):
    """The CI version of ``--only soak --minutes 30``: 200 engines for 2 minutes, 10 of
    them crashing now and then and 5 hanging every 20 cycles."""
    out = project.data_dir / "soak.json"
    project.manage(
        "benchmark",
        *("--only", "soak", "--engines", "200", "--minutes", "2", "--json", str(out)),
        timeout=600,
    )
    rows = json.loads(out.read_text())["rows"]

    def figure(prefix: str) -> dict:
        return next(row for row in rows if row["name"].startswith(prefix))

    slope = figure("RSS slope after warm-up")
    assert is_number(slope["value"]) and slope["baseline"] > 0, slope
    lag = figure("loop lag p99, worst minute")
    assert 0 <= lag["value"] < 1000, lag
    recovered = figure("crashes recovered")
    assert recovered["value"] > 0, recovered  # the hangs alone recover a few times
    assert recovered["value"] <= recovered["baseline"], recovered
    locked = figure('"database is locked" errors')
    assert locked["value"] == 0 and locked["baseline"] > 0, locked
    lost = figure("lost writes")
    assert lost["value"] == 0 and lost["baseline"] == 200, lost


def test_the_soak_names_the_allocation_site_that_grew():
    """``--tracemalloc``: a list that grows between the two snapshots is the first site."""
    kept: list[bytes] = []
    tracemalloc.start(1)
    try:
        start = tracemalloc.take_snapshot()
        for n in range(2000):
            kept.append(b"x" * 512 + n.to_bytes(4, "big"))  # the growing site
        end = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    top = growing_sites(start, end)[0]
    assert top["where"].endswith(f"{__file__}:{_growing_line()}"), top
    assert top["count_diff"] >= 2000 and top["size_diff_kb"] > 1000, top


def _growing_line() -> int:
    lines = open(__file__).read().splitlines()  # noqa: SIM115
    return next(n for n, line in enumerate(lines, 1) if line.endswith("# the growing site"))


def test_the_soak_shows_rss_every_five_minutes_and_at_the_end():
    # Every 5 s for 13 minutes: 100 MB, one more every 5 minutes.
    samples = [(tick / 12, 1024.0 * (100 + tick // 60)) for tick in range(12 * 13)]
    assert rss_marks(samples) == [(0, 100.0), (5, 101.0), (10, 102.0), (13, 102.0)]


# A small fleet, fast leases: takeover within seconds, so CI can afford it.
FLEET_LEASE = 3.0
FLEET_ENV = {
    "LEVIPANEL_LEASE": f"{FLEET_LEASE:g}",
    "LEVIPANEL_FLUSH_INTERVAL": "0.5",
    "LEVIPANEL_POLL_INTERVAL": "0.25",
}


@pytest.mark.postgres
def test_a_small_fleet_on_postgresql_is_measured(postgres_url, tmp_path):
    out = tmp_path / "fleet.json"
    env = FLEET_ENV | {"DATABASE_URL": postgres_url}  # the server to make its database on
    with Installation(tmp_path / "data", env) as installation:
        args = ["--engines", "200", "--seconds", "2", "--only", "fleet", "--json", str(out)]
        done = installation.manage("benchmark", *args, check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "error:" not in done.stdout and "skipped:" not in done.stdout, done.stdout
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}

    def figure(start: str) -> dict:
        found = [row for name, row in rows.items() if name.startswith(start)]
        assert len(found) == 1, f"{start!r} not in {sorted(rows)}"
        assert is_number(found[0]["value"]), found[0]
        return found[0]

    xids = figure("write transactions/s, 200 engines over 2 runners (PostgreSQL xids)")
    counted = figure("write transactions/s (runners' own counters")
    assert xids["baseline"] == counted["baseline"] == 20  # 200 engines / 10 s cycle
    # Two runners flushing twice a second: 4 a second, seen by the database too (which
    # also counts whatever else writes to the server meanwhile).
    assert 2 <= counted["value"] <= 8, counted
    assert xids["value"] >= counted["value"] - 1, (xids, counted)
    takeover = figure("takeover after kill -9 of one runner (100 engines)")
    assert takeover["baseline"] == FLEET_LEASE
    assert 0 < takeover["value"] < FLEET_LEASE + 5, takeover
    for start in ("event-loop lag p99, worst of 2", "event-loop lag p99, median of 2"):
        lag = figure(start)
        assert 0 <= lag["value"] < 1000 and is_number(lag["baseline"]), lag
    assert is_number(figure("write transactions/s of the rest of the server")["value"])


def test_the_status_section_prints_each_figure_beside_its_bare_view(project):
    out = project.data_dir / "bench.json"
    args = ["--engines", str(ENGINES), "--samples", "50", "--only", "status", "--json", str(out)]
    project.manage("benchmark", *args, timeout=300)
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    one = f"/engines/status/B{ENGINES // 2:05d}USDT"
    for figure, bare in [
        ("/engines/status, no ETag", "the fleet's status"),
        ("/engines/status, If-None-Match: 304", "the fleet's status"),
        ("/engines/status?status=stopped&symbol=B00&page=2&page_size=50", "the fleet's status"),
        (f"{one}, {ENGINES} engines, 8 clients", "one engine's status"),
        (f"{one}, {ENGINES} engines, 1 client", "one engine's status"),
    ]:
        for pct in ("p50", "p99"):
            row = next(r for name, r in rows.items() if figure in name and name.endswith(pct))
            assert is_number(row["value"]) and is_number(row["baseline"]), row
            assert row["baseline_name"] == f"bare Django JSON view of {bare}"
    handler = [row for name, row in rows.items() if "the panel's ASGI handler" in name]
    assert len(handler) == 3  # p50, p99, server CPU per request
    for row in handler:
        assert is_number(row["value"]) and is_number(row["baseline"]), row
        assert "Django's ASGI handler" in row["baseline_name"]


def engines_given(*, engines: int) -> list[dict]:
    return [{"name": "engines", "value": engines}]


def test_a_section_runs_its_own_engine_count_unless_one_is_given():
    section = Section("probe", f"{__name__}:engines_given", engines=10_000)
    assert run_section(section, engines=None).rows[0]["value"] == 10_000
    assert run_section(section, engines=200).rows[0]["value"] == 200
    assert run_section(Section("probe", f"{__name__}:engines_given")).rows[0]["value"] == 1000


def test_the_soak_runs_only_when_named():
    assert "soak" not in [section.name for section in chosen(None)]
    assert [section.name for section in chosen(["soak", "crash"])] == ["crash", "soak"]


def test_a_missing_section_is_skipped_with_its_reason():
    outcome = run_section(Section("later", "benchmarks.not_written_yet:run"))
    assert outcome.rows == [] and outcome.error is None
    assert outcome.skipped == "module benchmarks.not_written_yet is not present"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engines", "0"], "must be greater than 0"),
        (["--seconds", "soon"], "is not a number"),
        (["--minutes", "0"], "must be greater than 0"),
        (["--only", "nothing"], "invalid choice"),
        (["--json", "no-such-directory/out.json"], "does not exist"),
    ],
)
def test_bad_options_are_refused_clearly(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("benchmark", *args)


def test_targets_are_judged():
    assert verdict(3.0, "< 5") == "PASS"
    assert verdict(2.0, "<= 2") == "PASS"
    assert verdict(2.5, "<= 2") == "MISS"
    assert verdict(12.0, 10) == "MISS"
    assert verdict(1.0, None) is None


def test_push_figures_are_judged_against_the_design_targets():
    from benchmarks import judge, push

    def results(embedded_ms: float, redis_ms: float) -> dict[str, str | None]:
        embedded = push.Latencies([embedded_ms] * 20)
        redis = push.Latencies([redis_ms] * 20)
        rows = push.rows(1000, embedded, redis, [1.0])
        return {row["name"]: judge(row)["result"] for row in rows}

    assert results(400, 20) == {
        "push latency p50, 1000 engines, embedded": None,
        "push latency p95, 1000 engines, embedded": "PASS",
        "push latency p50, 1000 engines, Redis": None,
        "push latency p95, 1000 engines, Redis": "PASS",
    }
    slow = results(1200, 200)
    assert slow["push latency p95, 1000 engines, embedded"] == "MISS"
    assert slow["push latency p95, 1000 engines, Redis"] == "MISS"
