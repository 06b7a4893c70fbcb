"""The figures the failure suite measures, kept in one JSON file that ``docs/reliability.md``
shows as a table.

The file is ``test-artifacts/reliability.json`` (``LEVIPANEL_FIGURES`` puts it elsewhere), one
object::

    {
      "date": "2026-12-02",
      "machine": "Linux x86_64, 2 CPUs, Python 3.11.2",
      "rows": [
        {"scenario": "runner kill -9", "figure": "commands lost", "value": 0,
         "unit": "commands", "expected": "0"},
        ...
      ]
    }

``value`` is a number (or a short text), ``unit`` may be empty, ``expected`` is the goal as
a reader checks it ("0", "< 5 s", "= given"). A test records through the ``figures``
fixture of ``tests/conftest.py``: ``figures.record(scenario, figure, value, unit, expected)``.
A row replaces the earlier row of the same scenario and figure; rows of other scenarios stay,
so scenarios run one at a time still add up to one table. ``date`` and ``machine`` are
those of the latest write.

Render the rows into ``docs/reliability.md``, between its lines ``<!-- figures -->`` and
``<!-- /figures -->`` (with no argument, print the table)::

    python tests/helpers/figures.py docs/reliability.md

Imports no Django, so it runs as a plain script.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PATH = Path(os.environ.get("LEVIPANEL_FIGURES") or ROOT / "test-artifacts" / "reliability.json")
START, END = "<!-- figures -->", "<!-- /figures -->"
COLUMNS = ("scenario", "figure", "value", "unit", "expected")


def machine() -> str:
    """This machine as a reader compares machines: system, CPU count, Python."""
    system = f"{platform.system()} {platform.machine()}"
    return f"{system}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


class Figures:
    """Rows of figures, written to ``path`` as each is recorded."""

    def __init__(self, path: Path = PATH) -> None:
        self.path = path

    def record(
        self, scenario: str, figure: str, value: Any, unit: str = "", expected: str = ""
    ) -> None:
        """Keep one figure (replacing the earlier one of the same scenario and figure)."""
        row = dict(zip(COLUMNS, (scenario, figure, value, unit, expected), strict=True))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+") as file:
            # Another pytest run may record at the same time: one writer at a time.
            fcntl.flock(file, fcntl.LOCK_EX)
            file.seek(0)
            data = json.loads(file.read() or "{}")
            rows = data.get("rows", [])
            keys = [(old["scenario"], old["figure"]) for old in rows]
            if (scenario, figure) in keys:
                rows[keys.index((scenario, figure))] = row  # keep the table's order
            else:
                rows.append(row)
            data = {"date": datetime.date.today().isoformat(), "machine": machine(), "rows": rows}
            file.seek(0)
            file.truncate()
            json.dump(data, file, indent=1)

    def load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {"rows": []}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def table(data: dict[str, Any]) -> str:
    """The figures as a Markdown table, with the date and the machine above it."""
    lines = [
        f"Measured {data.get('date', '?')} on {data.get('machine', '?')}.",
        "",
        "| scenario | figure | value | expected |",
        "|---|---|---|---|",
    ]
    for row in data["rows"]:
        value = f"{_cell(row['value'])} {row['unit']}".strip()
        lines.append(f"| {row['scenario']} | {row['figure']} | {value} | {row['expected']} |")
    return "\n".join(lines)


def render(page: Path, data: dict[str, Any]) -> None:
    """Replace what lies between the markers of ``page`` with the table."""
    text = page.read_text()
    head, found, rest = text.partition(START)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        sys.exit(f"{page} has no {START} … {END} lines to put the table between")
    page.write_text(f"{head}{START}\n{table(data)}\n{END}{tail}")


if __name__ == "__main__":
    figures = Figures().load()
    if len(sys.argv) > 1:
        render(Path(sys.argv[1]), figures)
    else:
        print(table(figures))
