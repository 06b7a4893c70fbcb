from django.apps import AppConfig


class EnginesAppConfig(AppConfig):
    name = "engines_app"
    verbose_name = "Engines"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system check)
