from django.apps import AppConfig
from django.db.models.signals import post_migrate


class EnginesAppConfig(AppConfig):
    name = "engines_app"
    verbose_name = "Engines"

    def ready(self) -> None:
        # Register the system checks and connect the engines_written receivers.
        from . import admin_alerts, alerts, broadcast, checks, ops_checks, pnl, schedules  # noqa: F401
        from .signals import engines_written

        engines_written.connect(alerts.on_engines_written, dispatch_uid="levipanel-alerts")
        post_migrate.connect(
            schedules.ensure_schedules, sender=self, dispatch_uid="levipanel-alert-schedules"
        )
