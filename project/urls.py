from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from project import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("jobs/", views.job_list, name="job_list"),
    path("jobs/launch/<str:kind>/", views.launch, name="launch"),
    path("jobs/<int:job_id>/", views.job_detail, name="job"),
    path("jobs/<int:job_id>/progress/", views.job_progress, name="job_progress"),
    path("jobs/<int:job_id>/items/", views.job_items, name="job_items"),
    path("jobs/<int:job_id>/cancel/", views.cancel, name="job_cancel"),
    path("jobs/<int:job_id>/retry/", views.retry, name="job_retry"),
    path("login/", views.login, name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/login/", views.admin_login),  # before the admin's own, which it wraps
    path("admin/", admin.site.urls),
    path("", include("scheduler_app.urls")),
    path("", include("scanner.urls")),
]
