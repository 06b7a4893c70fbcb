from django.apps import AppConfig
from django.conf import settings
from django.core.signals import setting_changed
from django.db.models.signals import post_migrate

from .runtime.strategies import set_allowed_modules


def _strategy_modules_changed(setting: str, value, **kwargs) -> None:
    if setting == "LEVIPANEL_STRATEGY_MODULES":
        set_allowed_modules(value or [])


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
        # The runtime imports no Django: it is told which strategy modules it may load.
        set_allowed_modules(settings.LEVIPANEL_STRATEGY_MODULES)
        setting_changed.connect(_strategy_modules_changed, dispatch_uid="levipanel.strategies")
        post_migrate.connect(
            schedules.ensure_schedules, sender=self, dispatch_uid="levipanel.schedules"
        )
