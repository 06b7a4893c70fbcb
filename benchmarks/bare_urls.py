from functools import cache

from django.http import JsonResponse
from django.urls import path

from engines_app.selectors.engines import fleet_status
from levipanel.urls import urlpatterns as panel_urlpatterns


@cache
def _payload() -> dict:
    return fleet_status()


def bare_status(request):
    """No auth, no query, no schema: what serving the same JSON costs at the least."""
    return JsonResponse(_payload())


urlpatterns = [path("bench/bare-status", bare_status), *panel_urlpatterns]
