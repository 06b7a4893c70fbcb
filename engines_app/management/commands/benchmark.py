import argparse
import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from benchmarks import chosen, run_section, section_names
from benchmarks.report import document, table


def positive(cast):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse


class Command(BaseCommand):
    help = (
        "Measure the engine core against the design's targets, each figure beside a "
        "baseline from the same run. Uses temp data dirs: your database is not touched."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--engines",
            type=positive(int),
            metavar="N",
            help=(
                "Engines, passed to every section that takes them (default 1000 in one "
                "runner; fleet: 10000 over 10 runners)."
            ),
        )
        parser.add_argument(
            "--seconds",
            type=positive(float),
            default=10.0,
            metavar="S",
            help="How long to measure the steady state (default 10).",
        )
        parser.add_argument(
            "--samples",
            type=positive(int),
            metavar="K",
            help="Samples for the sections that take them (their own default otherwise).",
        )
        parser.add_argument(
            "--minutes",
            type=positive(float),
            metavar="M",
            help="How long the soak runs (default 30; CI runs 2).",
        )
        parser.add_argument(
            "--tracemalloc",
            type=positive(int),
            metavar="FRAMES",
            help=(
                "Soak: trace the runner's Python allocations (FRAMES frames each) and print "
                "the sites that grew most after the warm-up (slower; for finding leaks)."
            ),
        )
        parser.add_argument(
            "--only",
            nargs="+",
            choices=section_names(),
            metavar="SECTION",
            help=f"Run only these sections: {', '.join(section_names())}.",
        )
        parser.add_argument(
            "--json",
            nargs="?",
            const="-",
            metavar="PATH",
            help="Also write the figures as JSON to PATH (or after the table with no PATH).",
        )

    def handle(self, *args, engines, seconds, samples, minutes, tracemalloc, only, json, **options):
        if json not in (None, "-") and not Path(json).parent.is_dir():
            raise CommandError(f"--json {json}: directory {Path(json).parent} does not exist")
        outcomes = []
        for section in chosen(only):
            self.stderr.write(f"benchmark: {section.name} ...")
            started = time.perf_counter()
            given = {
                "seconds": seconds,
                "samples": samples,
                "minutes": minutes,
                "tracemalloc": tracemalloc,
            }
            outcomes.append(run_section(section, engines=engines, **given))
            took = time.perf_counter() - started
            self.stderr.write(f"benchmark: {section.name} took {took:.1f}s")
        self.stdout.write(table(outcomes, engines=engines, seconds=seconds))
        if json:
            self._write_json(document(outcomes, engines=engines, seconds=seconds), json)
        if broken := [outcome.section for outcome in outcomes if outcome.error]:
            raise CommandError(f"benchmark section(s) failed: {', '.join(broken)}")

    def _write_json(self, doc, path):
        text = json.dumps(doc, indent=None if path == "-" else 2)
        if path == "-":
            self.stdout.write(text)
            return
        try:
            Path(path).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"--json {path}: {exc.strerror or exc}") from exc
