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


def bare_one(request, symbol: str):
    """The same for one engine's status."""
    engine = next(engine for engine in _payload()["engines"] if engine["symbol"] == symbol)
    return JsonResponse(engine)


urlpatterns = [
    path("bench/bare-status", bare_status),
    path("bench/bare-status/<str:symbol>", bare_one),
    *panel_urlpatterns,
]
