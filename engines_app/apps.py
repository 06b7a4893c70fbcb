from django.apps import AppConfig


class EnginesAppConfig(AppConfig):
    name = "engines_app"
    verbose_name = "Engines"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        # Register the system check and connect the engines_written receivers.
        from . import broadcast, checks, pnl  # noqa: F401
        from .schedules import ensure_daily_reset_schedule

        post_migrate.connect(ensure_daily_reset_schedule, sender=self)
