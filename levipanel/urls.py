from django.contrib import admin
from django.urls import path, re_path

from engines_app import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", api.urls()),  # /engines/status…, /docs, /openapi.json
    # Keep last: other paths under /engines/ answer with a JSON 404.
    re_path(r"^engines(?:/(?P<rest>.*))?$", api.not_found),
]
