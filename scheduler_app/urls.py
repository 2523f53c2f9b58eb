from __future__ import annotations

from django.urls import path

from scheduler_app import views

urlpatterns = [
    path("contacts/", views.contacts, name="contacts"),
    path("contacts/<int:contact_id>/", views.contact, name="contact"),
    path("schedule/", views.schedule_overview, name="schedule_overview"),
    path("schedule/run/", views.schedule_launch, name="schedule_launch"),
    path("imports/new/", views.contact_import_new, name="contact_import_new"),
    path("imports/<int:import_id>/", views.contact_import, name="contact_import"),
    path(
        "imports/<int:import_id>/errors.csv",
        views.contact_import_errors,
        name="contact_import_errors",
    ),
    path("recipients/", views.recipient_jobs, name="recipient_jobs"),
    path("recipients/<int:job_id>/", views.job_recipients, name="job_recipients"),
    path(
        "recipients/<int:job_id>/recipients.csv",
        views.job_recipients_csv,
        name="job_recipients_csv",
    ),
    path("briefs/", views.brief_list, name="brief_list"),
    path("briefs/settings/", views.brief_preferences, name="brief_preferences"),
    path("briefs/<int:brief_id>/", views.brief, name="brief"),
]
