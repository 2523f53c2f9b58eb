from __future__ import annotations

from django.urls import path

from scanner import views

app_name = "scanner"
urlpatterns = [
    path("inbox/", views.conversations, name="conversations"),
    path("inbox/<int:conversation_id>/", views.conversation, name="conversation"),
    path("inbox/upload/", views.mailbox_upload, name="mailbox_upload"),
    path("shipments/", views.shipments, name="shipments"),
]
