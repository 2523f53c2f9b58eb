"""Admin for jobs and their items: look, cancel, retry. Jobs are launched from the dashboard."""

from __future__ import annotations

from functools import wraps

from django.contrib import admin, messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import BadRequest, PermissionDenied, ValidationError
from django.db import DataError, transaction
from django.urls import reverse
from django.utils.html import format_html
from django_rq.admin import QueueAdmin
from django_rq.models import Dashboard

from project import engine
from project.models import Job, JobItem

POLICY_FIELDS = ["stop_after_consecutive", "stop_failure_ratio", "stop_min_items"]


class ModelAdmin(admin.ModelAdmin):
    """The project's ModelAdmin: a filter value the database refuses is a 400, not a 500.

    Admin list URLs take any value for a filtered field; PostgreSQL refuses a NUL in text
    (DataError), and Python a date hierarchy year past 9999 (OverflowError) or a
    `created_at__year` below 1 (ValueError).
    """

    def get_changelist_instance(self, request):
        try:
            # A savepoint, so a refused query leaves the request's transaction usable.
            with transaction.atomic():
                return super().get_changelist_instance(request)
        except (DataError, OverflowError, ValueError) as exc:
            raise BadRequest(f"Bad filter value: {exc}") from None


@admin.register(Job)
class JobAdmin(ModelAdmin):
    list_display = [
        "id",
        "kind",
        "status",
        "source",
        "started_by",
        "total",
        "succeeded",
        "failed",
        "skipped",
        "cancelled",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "kind", "source"]
    search_fields = ["kind", "summary", "=id"]
    date_hierarchy = "created_at"
    list_select_related = ["started_by"]
    # Only the error policy stays editable: the engine reads it afresh at every flush, so
    # tightening it stops a running job. Everything else is the engine's to write.
    readonly_fields = [
        "kind",
        "params",
        "status",
        "source",
        "started_by",
        "parent",
        "concurrency",
        "items_link",
        "planning_done",
        "plan_cursor",
        "chunks",
        "cancel_requested_at",
        "created_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "total",
        "succeeded",
        "failed",
        "skipped",
        "cancelled",
        "consecutive_failures",
        "tallies",
        "duration_total_ms",
        "p50_ms",
        "p95_ms",
        "summary",
        "error",
    ]
    fieldsets = [
        (None, {"fields": ["kind", "params", "status", "source", "started_by", "parent"]}),
        (
            "Error policy",
            {
                "fields": [
                    "concurrency",
                    "stop_after_consecutive",
                    "stop_failure_ratio",
                    "stop_min_items",
                ]
            },
        ),
        (
            "Progress",
            {
                "fields": [
                    "items_link",
                    ("total", "succeeded", "failed", "skipped", "cancelled"),
                    "consecutive_failures",
                    "tallies",
                    ("duration_total_ms", "p50_ms", "p95_ms"),
                    "summary",
                    "error",
                ]
            },
        ),
        (
            "Timing",
            {
                "fields": [
                    "planning_done",
                    "plan_cursor",
                    "chunks",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "heartbeat_at",
                    "cancel_requested_at",
                ]
            },
        ),
    ]
    actions = ["cancel_jobs", "retry_failed_items"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # a job is launched through the engine, which also creates its items

    def save_model(self, request, obj, form, change) -> None:
        # Only the edited policy fields: writing back every column would overwrite the
        # counters the engine changed since the form was loaded.
        fields = [name for name in form.changed_data if name in POLICY_FIELDS]
        if fields:
            Job.objects.filter(pk=obj.pk).update(**{name: getattr(obj, name) for name in fields})

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm("project.add_job")

    @admin.display(description="Items")
    def items_link(self, job: Job) -> str:
        # A link rather than an inline: a job may have a million items.
        url = reverse("admin:project_jobitem_changelist")
        return format_html('<a href="{}?job__exact={}">{} items</a>', url, job.pk, job.total)

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_jobs(self, request, queryset) -> None:
        jobs = list(queryset)
        cancelled = [job for job in jobs if engine.cancel(job)]
        if cancelled:
            self.message_user(request, f"Cancelled {len(cancelled)} jobs.", messages.SUCCESS)
        if len(cancelled) < len(jobs):
            self.message_user(
                request,
                f"{len(jobs) - len(cancelled)} jobs had already finished or were being cancelled.",
                messages.WARNING,
            )

    @admin.action(description="Retry failed items of selected jobs", permissions=["retry"])
    def retry_failed_items(self, request, queryset) -> None:
        jobs = list(queryset)
        retried = []
        for job in jobs:
            if not (job.is_finished and job.failed):
                continue
            try:
                retried.append(engine.retry_failed(job, user=request.user, source=Job.Source.ADMIN))
            except ValidationError as exc:
                # E.g. its organization was renamed: the parameters no longer validate.
                self.message_user(
                    request,
                    f"Job #{job.pk} cannot be retried: {' '.join(exc.messages)}",
                    messages.ERROR,
                )
        if retried:
            self.message_user(
                request,
                "Launched retry jobs "
                + ", ".join(f"#{child.pk} ({child.total:,} items)" for child in retried)
                + ".",
                messages.SUCCESS,
            )
        if len(retried) < len(jobs):
            self.message_user(
                request,
                f"{len(jobs) - len(retried)} jobs were skipped: still running, no failed items, "
                "or parameters that no longer validate.",
                messages.WARNING,
            )


@admin.register(JobItem)
class JobItemAdmin(ModelAdmin):
    """Read-only: items change only through the engine, which keeps the job's counters."""

    list_display = ["job", "key", "status", "attempts", "error_type", "duration_ms", "finished_at"]
    # No error_type filter: its choices would be a SELECT DISTINCT over every item. The job
    # page groups failures; here `?error_type=...` and search still work.
    list_filter = ["status"]
    search_fields = ["key", "error_type", "error_message"]
    list_select_related = ["job"]
    raw_id_fields = ["job"]
    # Big tables: no second COUNT(*) over the whole table on filtered pages.
    show_full_result_count = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# -- django-rq -------------------------------------------------------------------------------


def superuser_only(view):
    """Let only active superusers through; others log in (anonymous) or get a 403."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        user = request.user
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        if not (user.is_active and user.is_superuser):
            raise PermissionDenied("The RQ queue pages are for superusers only.")
        return view(request, *args, **kwargs)

    return wrapper


class SuperuserQueueAdmin(QueueAdmin):
    """django-rq's queue pages, for superusers only: they empty queues and delete RQ jobs.

    django-rq lets any staff user in; a staff user without permissions could empty the queue
    the batch engine runs on.
    """

    def has_module_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request, obj=None) -> bool:
        return self.has_module_permission(request)

    def get_urls(self):
        urls = super().get_urls()
        for url in urls:
            url.callback = superuser_only(url.callback)
        return urls


if admin.site.is_registered(Dashboard):
    admin.site.unregister(Dashboard)
admin.site.register(Dashboard, SuperuserQueueAdmin)
