from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count
from django.utils import timezone
from django.utils.html import format_html

from project import engine
from project.admin import ModelAdmin
from project.kinds import get_kind
from project.models import Job
from scheduler_app.jobs import schedule_items
from scheduler_app.models import (
    BriefPreference,
    Contact,
    ContactImport,
    DailyBrief,
    Delivery,
    Mailing,
    Organization,
    ScheduledEmail,
    Subscription,
    Topic,
)


@admin.register(Organization)
class OrganizationAdmin(ModelAdmin):
    list_display = ["name", "contacts_count", "archived", "created_at"]
    list_filter = ["archived"]
    search_fields = ["name"]
    # Owners get the organization's section in their daily brief.
    filter_horizontal = ["owners"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(contacts_count=Count("contacts"))

    @admin.display(description="contacts", ordering="contacts_count")
    def contacts_count(self, organization: Organization) -> int:
        return organization.contacts_count


class SubscriptionInline(admin.TabularInline):
    model = Subscription
    fields = ["topic", "status"]
    extra = 0


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
    inlines = [SubscriptionInline]

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


# -- Topic recipients ------------------------------------------------------------------------


@admin.register(Topic)
class TopicAdmin(ModelAdmin):
    list_display = ["name", "mode", "description"]
    list_filter = ["mode"]
    search_fields = ["name", "description"]
    readonly_fields = ["created_at"]
    actions = ["gather_recipients"]

    def has_launch_permission(self, request) -> bool:
        # The job's page and recipients show addresses.
        return request.user.has_perms(["project.add_job", "scheduler_app.view_contact"])

    @admin.action(
        description="Gather recipients from every active organization (dry run)",
        permissions=["launch"],
    )
    def gather_recipients(self, request, queryset):
        for topic in queryset:
            job = engine.launch(
                "gather_recipients",
                {"topic": topic.name, "dry_run": True},
                source=Job.Source.ADMIN,
                user=request.user,
            )
            self.message_user(
                request,
                format_html(
                    'Gathering the recipients of {} (dry run): <a href="{}">job #{}</a>.',
                    topic.name,
                    get_kind(job.kind).results_url(job),
                    job.pk,
                ),
                messages.SUCCESS,
            )


@admin.register(Subscription)
class SubscriptionAdmin(ModelAdmin):
    list_display = ["contact", "topic", "status", "created_at"]
    list_filter = ["status", "topic"]
    list_select_related = ["contact", "topic"]
    search_fields = ["contact__email", "contact__first_name", "contact__last_name"]
    raw_id_fields = ["contact"]


@admin.register(Mailing)
class MailingAdmin(ModelAdmin):
    """Mailings are made by gather_recipients sends: read-only records."""

    list_display = ["title", "kind", "topic", "starts_at", "organizer", "created_at"]
    list_filter = ["kind", "topic"]
    list_select_related = ["topic"]
    search_fields = ["title"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(ModelAdmin):
    """Who got which mailing, and how each send ended: read-only records."""

    list_display = ["address", "mailing", "status", "sent_at", "job"]
    list_filter = ["status", "mailing__kind"]
    list_select_related = ["mailing", "job"]
    search_fields = ["address", "mailing__title"]


@admin.register(BriefPreference)
class BriefPreferenceAdmin(ModelAdmin):
    list_display = [
        "user",
        "active",
        "frequency",
        "day_of_week",
        "time_of_day",
        "timezone",
        "email_enabled",
    ]
    list_filter = ["active", "frequency", "email_enabled"]
    list_select_related = ["user"]
    search_fields = ["user__username", "user__email", "timezone"]
    raw_id_fields = ["user"]


@admin.register(DailyBrief)
class DailyBriefAdmin(ModelAdmin):
    """Briefs are records of what was sent: read-only."""

    list_display = ["user", "brief_date", "status", "is_reengagement", "reason", "sent_at"]
    list_filter = ["status", "is_reengagement", "summary_source", "brief_date"]
    list_select_related = ["user"]
    search_fields = ["user__username", "user__email"]
    date_hierarchy = "brief_date"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
