from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from engines_app import views as dashboard_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", dashboard_views.dashboard_page, name="dashboard"),
    path("engine/<str:symbol>/", dashboard_views.engine_page, name="engine"),
    path("login/", auth_views.LoginView.as_view(next_page="dashboard"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
]
