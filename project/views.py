"""The dashboard: launch jobs, watch them run, cancel them and retry their failures.

Live regions are partials of their page's template (`{% partialdef ... inline %}`): an
htmx request gets `template#partial`, anything else the whole page. Polled partials answer
286 (htmx stops polling) with their final content once there is nothing left to watch.
"""

from __future__ import annotations

import hashlib
import logging

import redis
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import DatabaseError, connection
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import (
    HttpResponseClientRedirect,
    HttpResponseStopPolling,
    trigger_client_event,
)

from project import engine
from project.connections import get_redis
from project.forms import JobFilterForm, LaunchForm
from project.kinds import JobKind, all_kinds, get_kind
from project.models import Job, JobItem

log = logging.getLogger(__name__)

DEFAULT_VIEW_PERMISSION = "project.view_job"
RECENT_JOBS = 20
JOBS_PER_PAGE = 50
ITEMS_PER_PAGE = 50
OPEN = "open"  # the item filter for pending and running items


class CountedPaginator(Paginator):
    """A paginator told its count instead of running COUNT(*) over a big job's items.

    The job page passes the job's counters, which the engine keeps exact in the same
    transactions that change the items.
    """

    def __init__(self, object_list, per_page: int, count: int):
        super().__init__(object_list, per_page)
        self.known_count = count

    @property
    def count(self) -> int:
        return self.known_count


def view_permission(kind_name: str) -> str:
    """The permission that shows a user the jobs of a kind, their items and their results.

    A kind names it in `view_permission` when its results show more than job figures (the
    scheduler's show contacts' addresses); otherwise, and for kinds no longer registered,
    it is project.view_job.
    """
    try:
        kind = get_kind(kind_name)
    except KeyError:
        return DEFAULT_VIEW_PERMISSION
    return kind.view_permission


def _visible(user, jobs: QuerySet[Job]) -> QuerySet[Job]:
    """The jobs among `jobs` whose kind's permission the user has."""
    if user.is_superuser:
        return jobs
    registered = [kind.name for kind in all_kinds()]
    visible = Q(kind__in=[name for name in registered if user.has_perm(view_permission(name))])
    if user.has_perm(DEFAULT_VIEW_PERMISSION):
        visible |= ~Q(kind__in=registered)
    return jobs.filter(visible)


def _get_job(request: HttpRequest, job_id: int) -> Job:
    """The job, or 404; 403 without the permission of the job's kind."""
    job = get_object_or_404(Job.objects.select_related("started_by", "parent"), pk=job_id)
    if not request.user.has_perm(view_permission(job.kind)):
        raise PermissionDenied(f"Viewing {job.kind} jobs needs {view_permission(job.kind)}.")
    return job


def _get_kind(name: str) -> JobKind:
    """The registered job kind that the dashboard launches, or 404.

    A kind with `launch_from_dashboard = False` is launched by its own page (an import
    needs an upload).
    """
    try:
        kind = get_kind(name)
    except KeyError:
        raise Http404(f"No job kind {name!r}") from None
    if not kind.launch_from_dashboard:
        raise Http404(f"{name!r} jobs are not launched from the dashboard")
    return kind


def _kind_label(name: str) -> str:
    try:
        return get_kind(name).label
    except KeyError:
        return name  # a kind that is no longer registered


def _redirect(request: HttpRequest, url: str) -> HttpResponse:
    """Redirect the whole page, also when the request came from htmx."""
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _render_polled(request: HttpRequest, template: str, context: dict, *, done: bool):
    """Render a polled partial; once `done`, answer 286 so htmx stops polling after the swap."""
    html = render_to_string(template, context, request)
    return HttpResponseStopPolling(html) if done else HttpResponse(html)


# -- Login -----------------------------------------------------------------------------------


def _login_failures_key(username: str) -> str:
    # Hashed: any string may be typed as a username, and Redis keys should stay short.
    digest = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return f"login-failures:{digest}"


def _login_failures(username: str) -> int:
    try:
        return int(get_redis().get(_login_failures_key(username)) or 0)
    except redis.RedisError:
        log.warning("login throttle: Redis does not answer; not counting failures")
        return 0


def _count_login_failure(username: str) -> None:
    key = _login_failures_key(username)
    try:
        with get_redis().pipeline() as pipe:
            pipe.incr(key).expire(key, settings.LOGIN_LOCKOUT_SECONDS, nx=True).execute()
    except redis.RedisError:
        log.warning("login throttle: Redis does not answer; not counting failures")


def login(request: HttpRequest) -> HttpResponse:
    """Django's login view, refused for a while after too many failed attempts at a username."""
    return _throttled(request, auth_views.LoginView.as_view())


def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin's login view, throttled like the dashboard's: the same counts."""
    return _throttled(request, admin.site.login)


def _throttled(request: HttpRequest, login_view) -> HttpResponse:
    """Run a login view unless the username failed LOGIN_MAX_FAILURES times lately.

    Counted per username (not per address: behind a proxy every user shares one), in Redis so
    every web process sees the same count; the count lapses LOGIN_LOCKOUT_SECONDS after the
    first failure. While refused, the password is not even checked.
    """
    username = request.POST.get("username", "") if request.method == "POST" else ""
    if username and _login_failures(username) >= settings.LOGIN_MAX_FAILURES:
        form = AuthenticationForm(request, data=request.POST)
        minutes = max(1, settings.LOGIN_LOCKOUT_SECONDS // 60)
        form.add_error(
            None, f"Too many failed logins for this username. Try again in {minutes} minutes."
        )
        context = {"form": form, "next": request.POST.get("next", "")}
        return render(request, "registration/login.html", context, status=429)
    response = login_view(request)
    if username and request.method == "POST" and response.status_code == 200:
        _count_login_failure(username)  # the form came back: wrong username or password
    return response


# -- Home ------------------------------------------------------------------------------------


def _jobs_context(request: HttpRequest) -> dict:
    jobs = _visible(request.user, Job.objects.select_related("started_by"))
    return {"active": list(jobs.active()), "recent": list(jobs[:RECENT_JOBS])}


def _render_home(request: HttpRequest, failed_form: LaunchForm | None = None, status=200):
    """The home page; `failed_form` is a launch form to show again with its errors."""
    launch_forms = []
    if request.user.has_perm("project.add_job"):
        launch_forms = [
            failed_form if failed_form and failed_form.kind is kind else LaunchForm(kind)
            for kind in all_kinds()
            if kind.launch_from_dashboard and request.user.has_perm(view_permission(kind.name))
        ]
    context = {**_jobs_context(request), "launch_forms": launch_forms}
    return render(request, "project/home.html", context, status=status)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    if request.htmx:
        context = _jobs_context(request)
        return _render_polled(
            request, "project/home.html#jobs", context, done=not context["active"]
        )
    return _render_home(request)


@login_required
@permission_required("project.add_job", raise_exception=True)
@require_POST
def launch(request: HttpRequest, kind: str) -> HttpResponse:
    job_kind = _get_kind(kind)
    if not request.user.has_perm(view_permission(job_kind.name)):
        raise PermissionDenied(f"Launching {kind} jobs needs {view_permission(kind)}.")
    form = LaunchForm(job_kind, request.POST)
    if form.is_valid():
        try:
            job = engine.launch(
                job_kind.name,
                form.params_data(),
                source=Job.Source.DASHBOARD,
                user=request.user,
                **form.launch_kwargs(),
            )
        except ValidationError as exc:
            form.add_engine_errors(exc.messages)
        else:
            if job.status == Job.Status.PLANNING:
                messages.success(request, f"Launched job #{job.pk}: planning its items.")
            else:
                messages.success(request, f"Launched job #{job.pk}: {job.total:,} items.")
            return _redirect(request, job.get_absolute_url())
    return _render_home(request, form, status=400)


# -- Jobs ------------------------------------------------------------------------------------


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    form = JobFilterForm(request.GET)
    jobs = form.filter(_visible(request.user, Job.objects.select_related("started_by")))
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "project/job_list.html", {"form": form, "page": page})


def _progress_context(job: Job) -> dict:
    """What the progress partial shows: one Job row, two Redis reads, failures grouped.

    Polled every second, so it never counts or scans the items: the counters are on the
    job, and failures are only grouped when there are some.
    """
    return {
        "job": job,
        "figures": engine.live_figures(job),
        "failures": engine.failure_groups(job) if job.failed else [],
    }


def _items_context(request: HttpRequest, job: Job) -> dict:
    """One page of the job's items, filtered by status; counts come from the job's counters."""
    filters = [
        (None, "All", job.total),
        (JobItem.Status.SUCCEEDED, "Succeeded", job.succeeded),
        (JobItem.Status.FAILED, "Failed", job.failed),
        (JobItem.Status.SKIPPED, "Skipped", job.skipped),
        (JobItem.Status.CANCELLED, "Cancelled", job.cancelled),
        (OPEN, "Waiting or running", job.total - job.settled),
    ]
    counts = {value: count for value, _, count in filters}
    status = request.GET.get("status") or None
    if status not in counts:
        status = None
    items = JobItem.objects.filter(job=job).order_by("id")
    if status == OPEN:
        items = items.filter(status__in=[JobItem.Status.PENDING, JobItem.Status.RUNNING])
    elif status:
        items = items.filter(status=status)
    paginator = CountedPaginator(items, ITEMS_PER_PAGE, count=counts[status])
    return {
        "job": job,
        "status": status,
        "status_filters": filters,
        "page": paginator.get_page(request.GET.get("page")),
    }


@login_required
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = _get_job(request, job_id)
    context = {
        **_progress_context(job),
        **_items_context(request, job),
        "kind_label": _kind_label(job.kind),
        "retries": list(job.retries.all()),
        "results_url": _results_url(job),
    }
    return render(request, "project/job_detail.html", context)


def _results_url(job: Job) -> str:
    """The kind's own page of the job's results (JobKind.results_url), if it has one."""
    try:
        return get_kind(job.kind).results_url(job)
    except KeyError:
        return ""


@login_required
def job_progress(request: HttpRequest, job_id: int) -> HttpResponse:
    job = _get_job(request, job_id)
    if not request.htmx:
        return redirect(job)
    context = _progress_context(job)
    response = _render_polled(
        request, "project/job_detail.html#progress", context, done=job.is_finished
    )
    if job.is_finished:
        # The item table listens for this and reloads once, so no row is left "running".
        trigger_client_event(response, "job-finished")
    return response


@login_required
def job_items(request: HttpRequest, job_id: int) -> HttpResponse:
    job = _get_job(request, job_id)
    if not request.htmx:
        return redirect(f"{job.get_absolute_url()}?{request.GET.urlencode()}#items")
    return render(request, "project/job_detail.html#items", _items_context(request, job))


@login_required
@permission_required("project.change_job", raise_exception=True)
@require_POST
def cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = _get_job(request, job_id)
    if engine.cancel(job):
        messages.success(
            request, f"Cancelling job #{job.pk}: waiting items are cancelled, running ones finish."
        )
    else:
        messages.info(request, f"Job #{job.pk} had already finished or was being cancelled.")
    return _redirect(request, job.get_absolute_url())


@login_required
@permission_required("project.add_job", raise_exception=True)
@require_POST
def retry(request: HttpRequest, job_id: int) -> HttpResponse:
    job = _get_job(request, job_id)
    if not (job.is_finished and job.failed):
        messages.error(request, f"Job #{job.pk} has no failed items to retry (yet).")
        return _redirect(request, job.get_absolute_url())
    try:
        child = engine.retry_failed(job, user=request.user, source=Job.Source.DASHBOARD)
    except ValidationError as exc:
        # E.g. the organization it ran for was renamed: its parameters no longer validate.
        messages.error(request, f"Job #{job.pk} cannot be retried: {' '.join(exc.messages)}")
        return _redirect(request, job.get_absolute_url())
    messages.success(
        request, f"Retrying the {child.total:,} failed items of job #{job.pk} as job #{child.pk}."
    )
    return _redirect(request, child.get_absolute_url())


# -- Health ----------------------------------------------------------------------------------


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """For load balancers and uptime checks: 200 when PostgreSQL and Redis answer, else 503.

    No login: it says only whether each service answers; the reason goes to the log.
    """
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except DatabaseError:
        log.exception("healthz: the database does not answer")
        checks["database"] = "unavailable"
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except redis.RedisError:
        log.exception("healthz: Redis does not answer")
        checks["redis"] = "unavailable"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(checks, status=200 if healthy else 503)
