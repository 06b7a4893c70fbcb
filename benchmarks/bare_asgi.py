"""The panel's ASGI app plus one bare Django JSON view of the same status payload, served
side by side by one daphne process for the GET-status benchmark's baseline."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levipanel.settings")

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
settings.ROOT_URLCONF = "benchmarks.bare_urls"
