from django.core.checks import Error, register

from . import conf


@register()
def engine_settings_check(app_configs, **kwargs):
    return [
        Error(problem, hint="Fix the environment variable and start again.", id="levipanel.E001")
        for problem in conf.problems()
    ]
