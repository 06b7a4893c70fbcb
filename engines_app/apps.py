from django.apps import AppConfig


class EnginesAppConfig(AppConfig):
    name = "engines_app"
    verbose_name = "Engines"

    def ready(self) -> None:
        # Register the system check and connect the engines_written receivers.
        from . import broadcast, checks, pnl  # noqa: F401
