"""The panel's ASGI app plus one bare Django JSON view of the same status payload, served
side by side by one daphne process for the GET-status benchmark's baseline; and
``django_handler``, the same served by Django's own ASGI handler (a thread made for each
request, the middleware hook by hook in async mode), for the panel's handler's baseline."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levipanel.settings")

from django.conf import settings  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402

from levipanel.collector import freeze_loaded  # noqa: E402
from levipanel.handler import get_asgi_application  # noqa: E402

application = get_asgi_application()
settings.ROOT_URLCONF = "benchmarks.bare_urls"
django_handler = ASGIHandler()
freeze_loaded()  # as the panel's own ASGI module does
