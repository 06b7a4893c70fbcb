from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from engines_app import api
from engines_app.web import views as dashboard_views
from engines_app.web.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("", dashboard_views.dashboard_page, name="dashboard"),
    path("engine/<str:symbol>/", dashboard_views.engine_page, name="engine"),
    path("backtest/<int:pk>/", dashboard_views.backtest_page, name="backtest"),
    path("kill-switch/", dashboard_views.kill_switch_page, name="kill_switch"),
    path("login/", auth_views.LoginView.as_view(next_page="dashboard"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    path("", api.urls()),  # /engines/status…, /docs, /openapi.json
    # Keep last: other paths under /engines/ answer with a JSON 404.
    re_path(r"^engines(?:/(?P<rest>[\s\S]*))?\Z", api.not_found),
]
