from django.apps import AppConfig
from django.db.models.signals import post_migrate


class EnginesAppConfig(AppConfig):
    name = "engines_app"
    verbose_name = "Engines"

    def ready(self) -> None:
        """Register the system checks and connect every receiver, here and nowhere else."""
        from . import checks  # noqa: F401  (registers the system checks)
        from .alerts import rules
        from .jobs import schedules
        from .signals import engines_written
        from .web import broadcaster

        engines_written.connect(rules.on_engines_written, dispatch_uid="levipanel.alerts")
        engines_written.connect(broadcaster.send_hint, dispatch_uid="levipanel.dashboard.hint")
        post_migrate.connect(
            schedules.ensure_schedules, sender=self, dispatch_uid="levipanel.schedules"
        )
