"""The panel's ASGI app plus one bare Django JSON view of the same status payload, served
side by side by one daphne process for the GET-status benchmark's baseline; and
``hook_by_hook``, the same without ``SyncMiddlewareChain``, so Django runs its middleware
hook by hook in async mode, for the chain's own baseline."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levipanel.settings")

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402

from levipanel.collector import freeze_loaded  # noqa: E402

application = get_asgi_application()
settings.ROOT_URLCONF = "benchmarks.bare_urls"


def _hook_by_hook() -> ASGIHandler:
    chain = settings.MIDDLEWARE
    settings.MIDDLEWARE = [name for name in chain if not name.endswith(".SyncMiddlewareChain")]
    try:
        return ASGIHandler()  # its middleware is loaded here
    finally:
        settings.MIDDLEWARE = chain


hook_by_hook = _hook_by_hook()
freeze_loaded()  # as the panel's own ASGI module does
