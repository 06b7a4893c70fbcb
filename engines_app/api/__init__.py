"""The JSON API (django-ninja): the Epic-1 guide's paths under ``/engines/``, docs at
``/docs`` and the OpenAPI schema at ``/openapi.json``. Every error is ``{"detail": "…"}``."""

from __future__ import annotations

import logging
from functools import wraps

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI
from ninja.errors import ValidationError

from .auth import SessionAuth, TokenAuth
from .routes import router, runners_router

log = logging.getLogger("levipanel.api")

api = NinjaAPI(
    title="LeviPanel API",
    version="1.0",
    description=(
        "Watch and steer the trading engines. Authenticate with `Authorization: Bearer "
        "<token>` (create a token in the admin) or a logged-in session with its CSRF token. "
        "Start, stop and restart need the permission *Can start, stop and restart engines*."
    ),
    auth=[TokenAuth(), SessionAuth()],
    urls_namespace="api",
)
api.add_router("/engines/", router)
api.add_router("/runners", runners_router)


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    first = exc.errors[0] if exc.errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return api.create_response(
        request, {"detail": f"{where}: {first.get('msg', 'invalid input')}"}, status=400
    )


@api.exception_handler(DatabaseError)
def _database_busy(request: HttpRequest, exc: DatabaseError) -> HttpResponse:
    log.warning("API request failed on the database: %s", exc)
    return api.create_response(request, {"detail": "the database is busy, try again"}, status=503)


def json_405(view):
    """ninja answers a wrong method with a plain-text 405; make it JSON like every error."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        response = view(request, *args, **kwargs)
        if isinstance(response, HttpResponseNotAllowed):
            allowed = response["Allow"]
            response = JsonResponse(
                {"detail": f"method {request.method} not allowed; use {allowed}"}, status=405
            )
            response["Allow"] = allowed
        return response

    return wrapped


def urls():
    """The API's URL patterns, with JSON 405s."""
    patterns, app_name, namespace = api.urls
    for pattern in patterns:
        pattern.callback = json_405(pattern.callback)
    return patterns, app_name, namespace


@csrf_exempt  # it changes nothing; a token client's POST must get this 404, not a CSRF page
def not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Any other path under /engines/: a JSON 404, not the HTML page."""
    return JsonResponse({"detail": f"not found: {request.path}"}, status=404)
