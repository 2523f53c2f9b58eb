"""Pages of the Medicare outreach: contacts, one contact's schedule, the overview, imports.

Permissions: looking at contacts and the schedule needs scheduler_app.view_contact, importing
needs scheduler_app.add_contact, launching a schedule run needs project.add_job and
scheduler_app.view_contact (its job page shows contacts); a gather job's recipients need
scheduler_app.view_contact. The contacts
list's results are a partial (`#results`) that htmx swaps as the search and filters change.
"""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from itertools import islice

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Q
from django.db.models.functions import TruncWeek
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django_htmx.http import HttpResponseStopPolling

from project import engine
from project.models import Job
from scheduler_app import importer, recipients, rules
from scheduler_app.forms import (
    BriefPreferenceForm,
    ContactFilterForm,
    ContactImportForm,
    OverviewFilterForm,
    ScheduleForm,
)
from scheduler_app.jobs import horizon_end
from scheduler_app.models import (
    BriefPreference,
    Contact,
    ContactImport,
    DailyBrief,
    Delivery,
    ScheduledEmail,
)

CONTACTS_PER_PAGE = 50
ERRORS_SHOWN = 200
OVERVIEW_WEEKS = 52
TYPES = [ScheduledEmail.Type(t) for t in rules.EMAIL_TYPES]


def _get_contact(contact_id: int) -> Contact:
    """The contact, or 404. Anyone who may view contacts may view every contact."""
    return get_object_or_404(Contact.objects.select_related("organization"), pk=contact_id)


def _get_import(import_id: int) -> ContactImport:
    """The import report, or 404. Anyone who may import may read every report."""
    return get_object_or_404(
        ContactImport.objects.select_related("created_by", "job"), pk=import_id
    )


def _pct(days: float, span: int) -> str:
    """A position on a strip of `span` days as a CSS percentage, formatted here (no locale)."""
    return f"{100 * days / span:.3f}"


# -- Contacts --------------------------------------------------------------------------------


@login_required
@permission_required("scheduler_app.view_contact", raise_exception=True)
def contacts(request: HttpRequest) -> HttpResponse:
    form = ContactFilterForm(request.GET)
    found = form.filter(Contact.objects.select_related("organization"))
    found = found.order_by("last_name", "first_name", "id")
    page = Paginator(found, CONTACTS_PER_PAGE).get_page(request.GET.get("page"))
    # The next pending email of the page's contacts only: one query, not one per row.
    upcoming = (
        ScheduledEmail.objects.pending()
        .filter(contact__in=[c.pk for c in page])
        .order_by("contact_id", "send_date", "type")
        .distinct("contact_id")
    )
    next_email = {email.contact_id: email for email in upcoming}
    for c in page:
        c.next_email = next_email.get(c.pk)
    template = "scheduler_app/contact_list.html"
    if request.htmx and not request.htmx.history_restore_request:
        template += "#results"
    return render(request, template, {"form": form, "page": page})


def _strip(contact: Contact, today: date, emails: list[ScheduledEmail]) -> dict:
    """The 12-month strip from today: month ticks, blocked periods, email markers, in percent."""
    last = horizon_end(today)
    span = (last - today).days + 1
    months = []
    month = today.replace(day=1)
    while month <= last:
        start = max(month, today)
        next_month = (month + timedelta(days=32)).replace(day=1)
        # The month of today is labelled only when enough of it is left for its label.
        if (next_month - start).days >= 15:
            label = month.strftime("%b %Y")
            months.append({"label": label, "left": _pct((start - today).days, span)})
        month = next_month
    strip = {"months": months, "periods": [], "markers": [], "error": "", "end": last}
    try:
        data = contact.rule_data(today)
    except rules.RuleError as err:
        strip["error"] = str(err)
        return strip
    strip["year_round"] = data.state in rules.YEAR_ROUND_STATES
    for period in rules.blocked_periods(data, today):
        start, end = max(period.start, today), min(period.end, last)
        if start > end:
            continue
        strip["periods"].append(
            {
                "period": period,
                "left": _pct((start - today).days, span),
                "width": _pct((end - start).days + 1, span),
            }
        )
    for email in emails:
        if today <= email.send_date <= last:
            left = _pct((email.send_date - today).days + 0.5, span)
            strip["markers"].append({"email": email, "left": left})
    return strip


@login_required
@permission_required("scheduler_app.view_contact", raise_exception=True)
def contact(request: HttpRequest, contact_id: int) -> HttpResponse:
    contact = _get_contact(contact_id)
    today = timezone.localdate()
    emails = list(contact.emails.select_related("job"))
    upcoming = [e for e in emails if e.send_date >= today]
    past = [e for e in reversed(emails) if e.send_date < today]
    context = {
        "contact": contact,
        "today": today,
        "upcoming": upcoming,
        "past": past,
        "strip": _strip(contact, today, upcoming),
    }
    return render(request, "scheduler_app/contact_detail.html", context)


# -- Schedule --------------------------------------------------------------------------------


def _week_chart(emails, first_week: date) -> dict:
    """Stacked bars of emails per week by type: one query grouped by (week, type)."""
    counts = {
        (row["week"], row["type"]): row["n"]
        for row in emails.annotate(week=TruncWeek("send_date"))
        .values("week", "type")
        .annotate(n=Count("id"))
        .order_by()
    }
    weeks = [first_week + timedelta(weeks=i) for i in range(OVERVIEW_WEEKS)]
    totals = [sum(counts.get((week, t), 0) for t in TYPES) for week in weeks]
    tallest = max(totals, default=0) or 1
    bars = []
    for week, total in zip(weeks, totals, strict=True):
        segments = [
            {"type": t, "n": counts[week, t], "height": _pct(counts[week, t], tallest)}
            for t in TYPES
            if counts.get((week, t))
        ]
        new_month = week.day <= 7
        bars.append({"week": week, "total": total, "segments": segments, "new_month": new_month})
    return {"bars": bars, "tallest": max(totals, default=0)}


@login_required
@permission_required("scheduler_app.view_contact", raise_exception=True)
def schedule_overview(request: HttpRequest) -> HttpResponse:
    form = OverviewFilterForm(request.GET)
    today = timezone.localdate()
    first_week = today - timedelta(days=today.weekday())  # TruncWeek's weeks start on Monday
    emails = ScheduledEmail.objects.filter(
        send_date__gte=first_week, send_date__lt=first_week + timedelta(weeks=OVERVIEW_WEEKS)
    )
    if form.is_valid() and form.cleaned_data["organization"]:
        emails = emails.filter(contact__organization=form.cleaned_data["organization"])
    by_type_status = {
        (row["type"], row["status"]): row["n"]
        for row in emails.values("type", "status").annotate(n=Count("id")).order_by()
    }
    statuses = ScheduledEmail.Status
    totals = [
        {
            "type": t,
            "counts": [by_type_status.get((t, s), 0) for s in statuses],
            "total": sum(by_type_status.get((t, s), 0) for s in statuses),
        }
        for t in TYPES
    ]
    column_totals = [sum(by_type_status.get((t, s), 0) for t in TYPES) for s in statuses]
    # Fallbacks (an AEP week taken because the assigned one was blocked) explain an uneven split.
    aep_days = (
        emails.filter(type=ScheduledEmail.Type.AEP)
        .values("send_date")
        .annotate(n=Count("id"), fallbacks=Count("id", filter=Q(reason__contains="fallback")))
        .order_by("send_date")
    )
    context = {
        "form": form,
        "today": today,
        "chart": _week_chart(emails, first_week),
        "types": TYPES,
        "statuses": list(statuses),
        "totals": totals,
        "column_totals": column_totals,
        "grand_total": sum(column_totals),
        "aep_days": aep_days,
        "last_run": Job.objects.filter(kind="schedule_emails").first(),
    }
    template = "scheduler_app/schedule_overview.html"
    if request.htmx and not request.htmx.history_restore_request:
        template += "#overview"
    return render(request, template, context)


@login_required
@permission_required(["project.add_job", "scheduler_app.view_contact"], raise_exception=True)
def schedule_launch(request: HttpRequest) -> HttpResponse:
    form = ScheduleForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = engine.launch(
                "schedule_emails",
                form.cleaned_data,
                source=Job.Source.DASHBOARD,
                user=request.user,
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(
                request, f"Job #{job.pk} is planning its contacts and scheduling them."
            )
            return redirect("job", job.pk)
    status = 400 if form.errors else 200
    return render(request, "scheduler_app/schedule_launch.html", {"form": form}, status=status)


# -- Imports ---------------------------------------------------------------------------------


@login_required
@permission_required("scheduler_app.add_contact", raise_exception=True)
def contact_import_new(request: HttpRequest) -> HttpResponse:
    """Store an upload and launch the job that imports it; the import page shows it run.

    Rows may update existing contacts only for users with scheduler_app.change_contact;
    for others such rows are bad rows of the report.
    """
    posted = request.method == "POST"
    form = ContactImportForm(
        request.POST if posted else None,
        request.FILES if posted else None,
        # Set by project.uploads while parsing the body, which request.FILES does.
        too_large=posted and bool(request.FILES is not None and too_large(request)),
    )
    if posted and form.is_valid():
        try:
            with transaction.atomic():
                record = importer.store_upload(
                    form.cleaned_data["text"],
                    filename=form.cleaned_data["file"].name,
                    organization=form.cleaned_data["organization"].strip(),
                    may_update=request.user.has_perm("scheduler_app.change_contact"),
                    user=request.user,
                )
                record.job = engine.launch(
                    "import_contacts",
                    {"contact_import": record.pk},
                    concurrency=1,
                    source=Job.Source.DASHBOARD,
                    user=request.user,
                )
                record.save(update_fields=["job"])
        except importer.HeaderError as err:
            form.add_error("file", str(err))
        else:
            messages.success(request, f"Importing {record.filename or 'the file'}.")
            return redirect(record)
    context = {"form": form, "recent": ContactImport.objects.select_related("created_by")[:10]}
    status = 400 if form.errors else 200
    return render(request, "scheduler_app/contact_import_new.html", context, status=status)


def too_large(request: HttpRequest) -> bool:
    """Whether project.uploads refused the request's body as over MAX_UPLOAD_MB."""
    return getattr(request, "upload_too_large", False)


@login_required
@permission_required("scheduler_app.add_contact", raise_exception=True)
def contact_import(request: HttpRequest, import_id: int) -> HttpResponse:
    """An import's counts and bad rows; while its job runs, `#report` is polled every second."""
    record = _get_import(import_id)
    rows = csv.DictReader(io.StringIO(record.errors_csv))
    errors = list(islice(rows, ERRORS_SHOWN))
    listed = len(errors) + sum(1 for _ in rows)
    running = record.job is not None and not record.job.is_finished
    context = {
        "record": record,
        "job": record.job,
        "running": running,
        "errors": errors,
        "listed": listed,
        "shown": len(errors),
    }
    if request.htmx and not request.htmx.history_restore_request:
        html = render_to_string("scheduler_app/contact_import.html#report", context, request)
        return HttpResponse(html) if running else HttpResponseStopPolling(html)
    return render(request, "scheduler_app/contact_import.html", context)


@login_required
@permission_required("scheduler_app.add_contact", raise_exception=True)
def contact_import_errors(request: HttpRequest, import_id: int) -> HttpResponse:
    record = _get_import(import_id)
    response = HttpResponse(record.errors_csv, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="import-{record.pk}-report.csv"'
    return response


# -- Topic recipients ------------------------------------------------------------------------

RECIPIENTS_PER_PAGE = 500


def _get_gather_job(job_id: int) -> Job:
    """The gather_recipients job, or 404. Anyone who may view contacts may view every one."""
    return get_object_or_404(Job, pk=job_id, kind=recipients.KIND)


@login_required
@permission_required("scheduler_app.view_contact", raise_exception=True)
def recipient_jobs(request: HttpRequest) -> HttpResponse:
    """Recent gather_recipients jobs, each linking to its recipients."""
    jobs = Job.objects.filter(kind=recipients.KIND).select_related("started_by")[:50]
    return render(request, "scheduler_app/recipient_jobs.html", {"jobs": jobs})


@login_required
@permission_required("scheduler_app.view_contact", raise_exception=True)
def job_recipients(request: HttpRequest, job_id: int) -> HttpResponse:
    """A gather job's organizations (count or error) and its numbered, merged recipients.

    While the job runs, `#gathered` is polled every second.
    """
    job = _get_gather_job(job_id)
    merged = recipients.merge(job)
    page = Paginator(merged, RECIPIENTS_PER_PAGE).get_page(request.GET.get("page"))
    sends = {}
    if not job.params.get("dry_run", True):
        sends = dict(
            Delivery.objects.filter(job=job)
            .values_list("status")
            .annotate(n=Count("id"))
            .order_by()
        )
    context = {
        "job": job,
        "running": not job.is_finished,
        "organizations": recipients.organization_rows(job),
        "page": page,
        "total": len(merged),
        "sends": sends,
    }
    if request.htmx and not request.htmx.history_restore_request:
        html = render_to_string("scheduler_app/job_recipients.html#gathered", context, request)
        return HttpResponse(html) if context["running"] else HttpResponseStopPolling(html)
    return render(request, "scheduler_app/job_recipients.html", context)


@login_required
@permission_required("scheduler_app.view_contact", raise_exception=True)
def job_recipients_csv(request: HttpRequest, job_id: int) -> HttpResponse:
    """The job's merged recipients as CSV: email, and the organization that gave it first."""
    job = _get_gather_job(job_id)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="recipients-{job.pk}.csv"'
    writer = csv.writer(response)
    writer.writerow(["email", "organization"])
    for recipient in recipients.merge(job):
        writer.writerow(
            [
                importer.spreadsheet_safe(recipient.address),
                importer.spreadsheet_safe(recipient.organization),
            ]
        )
    return response


# -- Daily briefs ----------------------------------------------------------------------------

BRIEFS_PER_PAGE = 30


def _get_brief(request: HttpRequest, brief_id: int) -> DailyBrief:
    """The brief, or 404: users see their own briefs; with view_dailybrief, anyone's."""
    found = DailyBrief.objects.select_related("user", "job")
    if not request.user.has_perm("scheduler_app.view_dailybrief"):
        found = found.filter(user=request.user)
    return get_object_or_404(found, pk=brief_id)


@login_required
def brief_list(request: HttpRequest) -> HttpResponse:
    """The user's own briefs, newest first, and their brief settings."""
    found = DailyBrief.objects.filter(user=request.user).defer("sections")
    page = Paginator(found, BRIEFS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "preference": BriefPreference.objects.filter(user=request.user).first(),
        "organizations": request.user.owned_organizations.order_by("name"),
    }
    return render(request, "scheduler_app/brief_list.html", context)


@login_required
def brief(request: HttpRequest, brief_id: int) -> HttpResponse:
    """One brief; while it is being built, `#brief` is polled every 2 seconds."""
    found = _get_brief(request, brief_id)
    building = found.status == DailyBrief.Status.PENDING
    context = {"brief": found, "building": building}
    if request.htmx and not request.htmx.history_restore_request:
        html = render_to_string("scheduler_app/brief_detail.html#brief", context, request)
        return HttpResponse(html) if building else HttpResponseStopPolling(html)
    return render(request, "scheduler_app/brief_detail.html", context)


@login_required
def brief_preferences(request: HttpRequest) -> HttpResponse:
    """The user's own brief settings: when, how often, in which zone, by email or not."""
    preference = BriefPreference.objects.filter(user=request.user).first()
    preference = preference or BriefPreference(user=request.user)
    form = BriefPreferenceForm(request.POST or None, instance=preference)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Brief settings saved.")
        return redirect("brief_list")
    status = 400 if form.errors else 200
    context = {"form": form}
    return render(request, "scheduler_app/brief_preferences.html", context, status=status)
