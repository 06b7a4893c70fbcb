"""The README and the pages under docs/ keep their links working: every relative link points at
a file that exists and, with an anchor, at a heading of that file; every page is linked from
the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, *PAGES]

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto: …


def prose_lines(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def relative_links(path: Path) -> list[str]:
    """Every link target of the file that is not a URL, inline code left out."""
    targets = []
    for line in prose_lines(path):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not EXTERNAL.match(target):
                targets.append(target)
    return targets


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, spaces to '-', other punctuation gone."""
    text = INLINE_CODE.sub(lambda code: code.group()[1:-1], heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors the headings of a Markdown file produce (repeats get -1, -2 …)."""
    found: set[str] = set()
    for line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        anchor, n = slug(match.group(1)), 0
        while (anchor if n == 0 else f"{anchor}-{n}") in found:
            n += 1
        found.add(anchor if n == 0 else f"{anchor}-{n}")
    return found


def broken_links(path: Path) -> list[str]:
    """What is wrong with each relative link of ``path``, as 'target: why'."""
    problems = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{target}: {file_part} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target}: no heading in {linked.name} makes #{anchor}")
    return problems


def test_the_docs_exist():
    assert README.exists()
    assert PAGES, "docs/ has no Markdown pages"


@pytest.mark.parametrize("path", DOCUMENTS, ids=[p.relative_to(ROOT).as_posix() for p in DOCUMENTS])
def test_every_relative_link_points_at_a_file_and_heading_that_exist(path):
    assert broken_links(path) == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for target in relative_links(README)
        if target.partition("#")[0]
    }
    missing = [page.relative_to(ROOT).as_posix() for page in PAGES if page.resolve() not in linked]
    assert missing == []


@pytest.mark.parametrize(
    "heading, anchor",
    [
        ("Add a status", "add-a-status"),
        ("GET /engines/status", "get-enginesstatus"),
        ("Alerts, metrics and retention", "alerts-metrics-and-retention"),
        ("The `runengines` command", "the-runengines-command"),
        ("snake_case and kebab-case", "snake_case-and-kebab-case"),
    ],
)
def test_slug_follows_github(heading, anchor):
    assert slug(heading) == anchor


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n", encoding="utf-8")
    page.write_text(
        "# Page\n\n[ok](other.md#a-section) [gone](missing.md) [bad](other.md#nowhere)\n"
        "[here](#page) [web](https://example.com/x.md)\n\n```\n[in code](nothing.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.md: missing.md does not exist",
        "other.md#nowhere: no heading in other.md makes #nowhere",
    ]
