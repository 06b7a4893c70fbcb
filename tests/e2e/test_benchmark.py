"""The benchmark command must not rot: a tiny run prints every figure beside a baseline."""

from __future__ import annotations

import json
import math

import pytest
from django.core.management import CommandError, call_command

from benchmarks import Section, run_section, verdict
from benchmarks.report import number

ENGINES = 20
FIGURES = [
    "start-up: 20 engines running",
    "event-loop lag p99, 20 engines",
    "RSS per engine",
    "DB write transactions/s (counted by SQLite)",
    "DB write transactions/s (runner's counter)",
    "one flush of 20 heartbeats (median)",
    "reconcile poll of 20 control rows (median)",
    "crash seen -> in the database p99",
    "restart due -> running in the database p99",
    "runner CPU, 20 engines",
    "crash -> detected p99",
    "crash -> running again, beyond backoff p99",
]


def is_number(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


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


def test_a_missing_section_is_skipped_with_its_reason():
    outcome = run_section(Section("later", "benchmarks.not_written_yet:run"))
    assert outcome.rows == [] and outcome.error is None
    assert outcome.skipped == "module benchmarks.not_written_yet is not present"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engines", "0"], "must be greater than 0"),
        (["--seconds", "soon"], "is not a number"),
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
        return {row["name"]: judge(row)["result"] for row in push.rows(embedded, redis, [1.0])}

    assert results(400, 20) == {
        "push latency p50, embedded": None,
        "push latency p95, embedded": "PASS",
        "push latency p50, Redis": None,
        "push latency p95, Redis": "PASS",
    }
    slow = results(1200, 200)
    assert slow["push latency p95, embedded"] == "MISS"
    assert slow["push latency p95, Redis"] == "MISS"
