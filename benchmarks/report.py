"""The benchmark's table and its JSON document."""

from __future__ import annotations

import math
import os
import platform
from typing import Any

from benchmarks import Outcome, Row

COLUMNS = ("figure", "value", "baseline", "ratio", "target", "result", "baseline is")


def number(value: Any) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    size = abs(value)
    if size >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.1f}" if size >= 10 else f"{value:.2f}" if size >= 0.1 else f"{value:.3f}"


def cells(row: Row) -> tuple[str, ...]:
    unit = row.get("unit") or ""
    ratio = row.get("ratio")
    target = row.get("target")
    return (
        str(row["name"]),
        f"{number(row.get('value'))} {unit}".strip(),
        f"{number(row.get('baseline'))} {unit}".strip(),
        f"x{number(ratio)}" if ratio is not None else "n/a",
        "-" if target is None else f"{target} {unit}".strip(),
        row.get("result") or "-",
        str(row.get("baseline_name") or ""),
    )


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def table(outcomes: list[Outcome], *, engines: int | None, seconds: float) -> str:
    """A plain-text table, then one line per skipped or broken section."""
    info = machine()
    scale = f"{engines} engines" if engines else "each section's default engine count"
    lines = [
        f"LeviPanel benchmark: {scale}, {seconds:g} s steady state, "
        f"{info['cpus']} CPUs, Python {info['python']}, {info['platform']}",
        "",
    ]
    body = [cells(row) for outcome in outcomes for row in outcome.rows]
    widths = [max(len(line[i]) for line in [COLUMNS, *body]) for i in range(len(COLUMNS))]
    for line in [COLUMNS, tuple("-" * width for width in widths), *body]:
        padded = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        lines.append("  ".join(padded).rstrip())
    for outcome in outcomes:
        if outcome.skipped:
            lines.append(f"skipped: {outcome.section}: {outcome.skipped}")
        if outcome.error:
            lines.append(f"error: {outcome.section}: {outcome.error}")
    return "\n".join(lines)


def document(outcomes: list[Outcome], *, engines: int | None, seconds: float) -> dict[str, Any]:
    return {
        "engines": engines,
        "seconds": seconds,
        "machine": machine(),
        "rows": [row for outcome in outcomes for row in outcome.rows],
        "skipped": [
            {"section": outcome.section, "reason": outcome.skipped}
            for outcome in outcomes
            if outcome.skipped
        ],
        "errors": [
            {"section": outcome.section, "error": outcome.error}
            for outcome in outcomes
            if outcome.error
        ],
    }
