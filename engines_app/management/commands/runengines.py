import asyncio
import signal

from django.core.management.base import BaseCommand, CommandError

from ...runner.lifecycle import Runner, RunnerFailed, RunnerRefused
from ...runtime.engine import symbol_problem


class Command(BaseCommand):
    help = (
        "Run the trading engines and keep them alive until SIGINT/SIGTERM "
        "(a second signal stops at once)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--symbols",
            nargs="+",
            metavar="SYMBOL",
            help="Run only these symbols (created, desired running, if they do not exist).",
        )

    def handle(self, *args, symbols=None, **options):
        for symbol in symbols or []:
            if problem := symbol_problem(symbol):
                raise CommandError(f"{symbol!r}: {problem}")
        runner = Runner(symbols=symbols, out=self.stdout)
        try:
            asyncio.run(self._run(runner))
        except RunnerFailed as exc:  # logged with its traceback already
            raise CommandError(str(exc)) from exc
        except RunnerRefused as exc:  # another runner holds the database, or this name
            raise CommandError(str(exc)) from None

    async def _run(self, runner: Runner) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.request_exit)
        try:
            await runner.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
