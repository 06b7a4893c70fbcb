"""Benchmarks of the targets in the design's "Targets" table, each beside a baseline.

A section is one line in ``SECTIONS``: a name, ``"module:function"`` and the engines it
runs when ``--engines`` is not given (1000 unless it says otherwise); a long one runs only
when ``--only`` names it. The function
takes keyword-only options (it gets only those of ``engines``/``seconds``/``samples`` it
names, ``minutes`` included) and returns rows shaped::

    {"name": ..., "value": float, "unit": "ms", "baseline": float,
     "baseline_name": "what the baseline is", "target": "< 50" | 50 | None}

A number as target means "at most"; a string is an operator and a number ("< 5", "<= 2").
A section whose module is missing, or that raises ``Skip`` (or ``ConnectionError``: a
service is not reachable), is reported as skipped with its reason; the others still run.
Any other exception is reported as that section's error, and the command exits non-zero.

Nothing here imports Django: worker subprocesses import this package before setting it up.
"""

from __future__ import annotations

import importlib
import inspect
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]


@dataclass(frozen=True)
class Section:
    name: str
    target: str  # "package.module:function"
    note: str = ""
    engines: int = 1000  # when ``--engines`` is not given
    only_when_named: bool = False  # a long run: only with ``--only NAME``


SECTIONS = [
    Section("startup", "benchmarks.runner:startup"),
    Section("steady", "benchmarks.runner:steady"),
    Section("startup-pg", "benchmarks.runner:startup_pg", note="PostgreSQL"),
    Section("steady-pg", "benchmarks.runner:steady_pg", note="PostgreSQL"),
    Section("crash", "benchmarks.runner:crash"),
    Section("commands", "benchmarks.commands:run"),
    Section("push", "benchmarks.push:run", engines=10_000),
    Section("status", "benchmarks.status:run"),
    Section("fleet", "benchmarks.fleet:run", engines=10_000),
    Section("soak", "benchmarks.soak:run", note="--minutes, default 30", only_when_named=True),
]
OPTIONS = ("engines", "seconds", "samples", "minutes")


class Skip(Exception):
    """Raised by a section that cannot run here (a service is absent); says why."""


@dataclass
class Outcome:
    section: str
    rows: list[Row]
    skipped: str | None = None
    error: str | None = None


def section_names() -> list[str]:
    return [section.name for section in SECTIONS]


def chosen(only: list[str] | None) -> list[Section]:
    """The sections ``--only`` names, in table order; without it, all but the long ones."""
    if only:
        return [section for section in SECTIONS if section.name in only]
    return [section for section in SECTIONS if not section.only_when_named]


def load(section: Section) -> Callable[..., list[Row]]:
    """Import a section's function; ``Skip`` when its module is not there."""
    module_name, _, function_name = section.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            note = f" ({section.note})" if section.note else ""
            raise Skip(f"module {module_name} is not present{note}") from exc
        raise
    return getattr(module, function_name or "run")


def run_section(section: Section, **options: Any) -> Outcome:
    """Run one section with the options its function accepts; never raise."""
    if options.get("engines") is None:
        options["engines"] = section.engines
    try:
        function = load(section)
        accepted = inspect.signature(function).parameters
        rows = function(**{k: v for k, v in options.items() if k in accepted and v is not None})
    except Skip as exc:
        return Outcome(section.name, [], skipped=str(exc))
    except ConnectionError as exc:  # a service is not there: say so, don't fail
        return Outcome(section.name, [], skipped=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # one broken section must not hide the others' figures
        return Outcome(section.name, [], error=f"{type(exc).__name__}: {exc}")
    return Outcome(section.name, [judge(row) | {"section": section.name} for row in rows])


_OPERATORS = {
    "<": operator.lt,
    "<=": operator.le,
    "≤": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "≥": operator.ge,
}
_TARGET_RE = re.compile(r"^\s*(<=|>=|<|>|≤|≥)\s*([0-9.,_]+)\s*$")


def verdict(value: float | None, target: Any) -> str | None:
    """PASS / MISS against a target, None when there is no target to judge by."""
    if target is None or value is None or not math.isfinite(value):
        return None
    if isinstance(target, int | float):
        return "PASS" if value <= target else "MISS"
    match = _TARGET_RE.match(str(target))
    if not match:
        return None
    limit = float(match.group(2).replace(",", "").replace("_", ""))
    return "PASS" if _OPERATORS[match.group(1)](value, limit) else "MISS"


def judge(row: Row) -> Row:
    """Add the ratio to the baseline and the verdict."""
    value, baseline = row.get("value"), row.get("baseline")
    ratio = None
    if isinstance(value, int | float) and isinstance(baseline, int | float) and baseline:
        ratio = value / baseline
    return {**row, "ratio": ratio, "result": verdict(value, row.get("target"))}


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def row(
    name: str, value: float, unit: str, baseline: float, baseline_name: str, target: Any
) -> Row:
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_name": baseline_name,
        "target": target,
    }
