from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count
from django.utils import timezone
from django.utils.html import format_html

from project import engine
from project.admin import ModelAdmin
from project.models import Job
from scheduler_app.jobs import schedule_items
from scheduler_app.models import Contact, ContactImport, Organization, ScheduledEmail


@admin.register(Organization)
class OrganizationAdmin(ModelAdmin):
    list_display = ["name", "contacts_count", "created_at"]
    search_fields = ["name"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(contacts_count=Count("contacts"))

    @admin.display(description="contacts", ordering="contacts_count")
    def contacts_count(self, organization: Organization) -> int:
        return organization.contacts_count


@admin.register(Contact)
class ContactAdmin(ModelAdmin):
    list_display = [
        "__str__",
        "email",
        "state",
        "organization",
        "birth_date",
        "effective_date",
    ]
    list_filter = ["organization", "state"]
    list_select_related = ["organization"]
    search_fields = ["first_name", "last_name", "email", "external_id"]
    readonly_fields = ["created_at", "updated_at"]
    actions = ["schedule_emails"]

    def has_launch_permission(self, request) -> bool:
        return request.user.has_perm("project.add_job")

    @admin.action(description="Schedule emails for selected contacts", permissions=["launch"])
    def schedule_emails(self, request, queryset):
        # Positions count among the selection, in ascending id (scheduler_app/jobs.py).
        today = timezone.localdate()
        job = engine.launch(
            "schedule_emails",
            {"today": today},
            keys=schedule_items(queryset, today),
            source=Job.Source.ADMIN,
            user=request.user,
        )
        self.message_user(
            request,
            format_html(
                'Scheduling emails for {} contacts from {}: <a href="{}">job #{}</a>.',
                job.total,
                today,
                job.get_absolute_url(),
                job.pk,
            ),
            messages.SUCCESS,
        )


@admin.register(ScheduledEmail)
class ScheduledEmailAdmin(ModelAdmin):
    list_display = ["contact", "type", "send_date", "status", "job"]
    list_filter = ["type", "status", "send_date"]
    list_select_related = ["contact", "job"]
    search_fields = ["contact__first_name", "contact__last_name", "contact__email"]
    raw_id_fields = ["contact", "job"]
    readonly_fields = ["claimed_at", "sent_at", "created_at"]
    date_hierarchy = "send_date"


@admin.register(ContactImport)
class ContactImportAdmin(ModelAdmin):
    """Import reports are records of what happened: read-only."""

    list_display = ["__str__", "organization", "rows", "created", "updated", "failed", "created_by"]
    list_select_related = ["created_by"]
    search_fields = ["filename", "organization"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
