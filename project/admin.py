"""Admin for jobs and their items: look, cancel, retry. Jobs are launched from the dashboard."""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from project import engine
from project.models import Job, JobItem

POLICY_FIELDS = ["stop_after_consecutive", "stop_failure_ratio", "stop_min_items"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
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
        retried = [
            engine.retry_failed(job, user=request.user, source=Job.Source.ADMIN)
            for job in jobs
            if job.is_finished and job.failed
        ]
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
                f"{len(jobs) - len(retried)} jobs were skipped: still running, or no failed items.",
                messages.WARNING,
            )


@admin.register(JobItem)
class JobItemAdmin(admin.ModelAdmin):
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
