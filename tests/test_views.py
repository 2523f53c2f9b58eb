"""The dashboard pages: access, launching, live progress, items, cancel and retry.

No workers run here: `engine.launch` only enqueues chunks once its transaction commits,
which never happens inside a test's transaction, so jobs stay queued and the tests move
them along by updating rows.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from project import engine
from project.engine.live import failure_key
from project.models import Job, JobItem

HX = {"HTTP_HX_REQUEST": "true"}


def launch_sleep(user=None, items: int = 10, **kwargs) -> Job:
    return engine.launch("sleep", {"items": items, "latency_ms": 0}, user=user, **kwargs)


def update(job: Job, **fields) -> Job:
    Job.objects.filter(pk=job.pk).update(**fields)
    job.refresh_from_db()
    return job


def fail_items(job: Job, keys, error_type="PermanentError", message="boom") -> None:
    """Fail items as a runner would, failure counters included."""
    failed = JobItem.objects.filter(job=job, key__in=keys).update(
        status=JobItem.Status.FAILED, error_type=error_type, error_message=message, attempts=1
    )
    job.refresh_from_db()
    group = failure_key(job, error_type, message)
    job.failure_counts[group] = job.failure_counts.get(group, 0) + failed
    Job.objects.filter(pk=job.pk).update(failure_counts=job.failure_counts)


def finish(job: Job, **fields) -> Job:
    """Settle the job as a run would: failed items stay failed, the rest succeed."""
    JobItem.objects.filter(job=job, status=JobItem.Status.PENDING).update(
        status=JobItem.Status.SUCCEEDED, attempts=1, duration_ms=12.5, result="slept 0 ms"
    )
    failed = JobItem.objects.filter(job=job, status=JobItem.Status.FAILED).count()
    job = update(
        job,
        succeeded=job.total - failed,
        failed=failed,
        started_at=job.created_at,
        finished_at=timezone.now(),
        **fields,
    )
    return update(
        job,
        status=fields.get("status", job.final_status()),
        summary=fields.get("summary", job.summary_line()),
    )


@pytest.fixture
def job(operator) -> Job:
    return launch_sleep(operator, items=10)


@pytest.fixture
def running_and_failed(operator) -> tuple[Job, Job]:
    """A running job (something to cancel) and a finished one with a failure (to retry)."""
    running = update(launch_sleep(operator), status=Job.Status.RUNNING)
    failed = launch_sleep(operator)
    fail_items(failed, ["0"])
    return running, finish(failed)


@pytest.fixture
def operator_client(client, operator) -> Client:
    client.force_login(operator)
    return client


@pytest.fixture
def viewer_client(client, viewer) -> Client:
    client.force_login(viewer)
    return client


# -- Access ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "method", "with_job"),
    [
        ("home", "get", False),
        ("job_list", "get", False),
        ("job", "get", True),
        ("job_progress", "get", True),
        ("job_items", "get", True),
        ("launch", "post", False),
        ("job_cancel", "post", True),
        ("job_retry", "post", True),
    ],
)
def test_anonymous_users_are_sent_to_the_login_page(client, job, name, method, with_job):
    if name == "launch":
        url = reverse(name, args=["sleep"])
    else:
        url = reverse(name, args=[job.pk] if with_job else [])

    response = getattr(client, method)(url)
    from_htmx = getattr(client, method)(url, **HX)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")
    # htmx gets a whole-page redirect, not a login page to swap into the region it polls.
    assert from_htmx.status_code == 200
    assert from_htmx["HX-Redirect"].startswith(reverse("login") + "?next=")
    assert from_htmx.content == b""
    job.refresh_from_db()
    assert job.cancel_requested_at is None
    assert Job.objects.count() == 1


def test_an_expired_session_sends_the_polling_page_to_the_login_page(client, job):
    response = client.get(
        reverse("job_progress", args=[job.pk]),
        headers={"HX-Request": "true", "HX-Current-URL": f"http://testserver/jobs/{job.pk}/"},
    )

    assert response.status_code == 200
    assert response["HX-Redirect"] == f"{reverse('login')}?next=/jobs/{job.pk}/"
    assert "<form" not in response.text


def test_the_login_page_logs_a_user_in_and_the_logout_button_logs_them_out(client, operator):
    assert client.get(reverse("login")).status_code == 200

    response = client.post(reverse("login"), {"username": "olivia", "password": "pw-olivia"})
    assert response.status_code == 302
    home = client.get(reverse("home"))
    assert home.status_code == 200
    assert "olivia" in home.text

    client.post(reverse("logout"))
    assert client.get(reverse("home")).status_code == 302


def launch_data(**overrides) -> dict:
    data = {"sleep-items": "7", "sleep-latency_ms": "5", "sleep-run-concurrency": "3"}
    data.update(overrides)
    return data


@pytest.mark.parametrize("action", ["launch", "cancel", "retry"])
def test_posts_without_a_csrf_token_are_rejected(operator, running_and_failed, action):
    running, failed = running_and_failed
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    url = {
        "launch": reverse("launch", args=["sleep"]),
        "cancel": reverse("job_cancel", args=[running.pk]),
        "retry": reverse("job_retry", args=[failed.pk]),
    }[action]

    response = client.post(url, launch_data(), **HX)

    assert response.status_code == 403
    assert Job.objects.count() == 2
    running.refresh_from_db()
    assert running.cancel_requested_at is None


def test_a_post_with_the_csrf_token_from_the_page_is_accepted(operator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    client.get(reverse("home"))
    token = client.cookies["csrftoken"].value

    response = client.post(
        reverse("launch", args=["sleep"]), launch_data(), HTTP_X_CSRFTOKEN=token, **HX
    )

    assert response.status_code == 200
    assert Job.objects.count() == 1


def test_a_viewer_without_permissions_gets_403_and_nothing_happens(
    viewer_client, running_and_failed
):
    running, failed = running_and_failed

    assert viewer_client.post(reverse("launch", args=["sleep"]), launch_data()).status_code == 403
    assert viewer_client.post(reverse("job_cancel", args=[running.pk])).status_code == 403
    assert viewer_client.post(reverse("job_retry", args=[failed.pk])).status_code == 403

    assert Job.objects.count() == 2
    running.refresh_from_db()
    assert running.cancel_requested_at is None
    assert running.cancelled == 0


def test_a_viewer_may_look_but_sees_no_launch_form_and_no_cancel_button(viewer_client, viewer, job):
    viewer.user_permissions.add(Permission.objects.get(codename="view_job"))
    update(job, status=Job.Status.RUNNING)

    home = viewer_client.get(reverse("home"))
    page = viewer_client.get(job.get_absolute_url())

    assert home.status_code == 200
    assert f"#{job.pk}" in home.text
    assert "Launch a job" not in home.text
    assert page.status_code == 200
    assert "Cancel job" not in page.text


def test_job_pages_need_the_permission_of_the_job_s_kind(client, viewer, operator):
    sleep = launch_sleep(operator)
    send = engine.launch("send_due_emails", {"on_or_before": "2030-01-01"}, user=operator)
    client.force_login(viewer)

    def statuses(job):
        urls = [
            job.get_absolute_url(),
            reverse("job_progress", args=[job.pk]),
            reverse("job_items", args=[job.pk]),
        ]
        return [client.get(url, **HX).status_code for url in urls]

    def listed():
        text = client.get(reverse("job_list")).text + client.get(reverse("home")).text
        return {job.pk for job in (sleep, send) if f'href="{job.get_absolute_url()}"' in text}

    assert statuses(sleep) == statuses(send) == [403, 403, 403]
    assert listed() == set()

    viewer.user_permissions.add(Permission.objects.get(codename="view_job"))
    assert statuses(sleep) == [200, 200, 200]
    assert statuses(send) == [403, 403, 403]  # send results show contacts' addresses
    assert listed() == {sleep.pk}

    viewer.user_permissions.add(Permission.objects.get(codename="view_contact"))
    assert statuses(send) == [200, 200, 200]
    assert listed() == {sleep.pk, send.pk}


def test_an_operator_without_view_contact_cannot_launch_scheduler_jobs(operator_client):
    home = operator_client.get(reverse("home")).text
    response = operator_client.post(
        reverse("launch", args=["send_due_emails"]),
        {"send_due_emails-on_or_before": "2030-01-01", "send_due_emails-run-concurrency": "2"},
    )

    assert 'name="sleep-items"' in home
    assert "send_due_emails-on_or_before" not in home
    assert response.status_code == 403
    assert not Job.objects.exists()


# -- Home and launching ----------------------------------------------------------------------


def test_the_home_page_shows_running_and_recent_jobs_and_a_launch_form_per_kind(
    operator_client, operator
):
    running = update(launch_sleep(operator, items=40), status=Job.Status.RUNNING, succeeded=10)
    done = finish(launch_sleep(operator, items=5))

    response = operator_client.get(reverse("home"))

    assert response.status_code == 200
    text = response.text
    assert "Running" in text
    assert f"#{running.pk}" in text and "10 / 40" in text
    assert f"#{done.pk}" in text and done.summary in text
    assert "Sleep (synthetic)" in text
    assert 'name="sleep-items"' in text and 'name="sleep-run-concurrency"' in text
    assert 'name="sleep-run-stop_after_consecutive"' in text
    assert 'hx-trigger="every 2s"' in text


def test_the_home_page_stops_polling_once_no_job_is_running(operator_client, operator):
    job = update(launch_sleep(operator), status=Job.Status.RUNNING)

    polling = operator_client.get(reverse("home"), **HX)
    assert polling.status_code == 200
    assert "<html" not in polling.text
    assert f"#{job.pk}" in polling.text

    finish(job)
    stopped = operator_client.get(reverse("home"), **HX)
    assert stopped.status_code == 286
    assert "Succeeded" in stopped.text
    assert "hx-trigger" not in stopped.text


def test_launching_from_the_dashboard_creates_a_job_and_redirects_to_it(operator_client, operator):
    response = operator_client.post(
        reverse("launch", args=["sleep"]),
        launch_data(
            **{"sleep-run-stop_after_consecutive": "4", "sleep-run-stop_failure_ratio": "0.5"}
        ),
    )

    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == job.get_absolute_url()
    assert job.kind == "sleep"
    assert job.source == Job.Source.DASHBOARD
    assert job.started_by == operator
    assert job.params == {"items": 7, "latency_ms": 5}
    assert job.total == 7
    assert job.concurrency == 3
    assert job.stop_after_consecutive == 4
    assert job.stop_failure_ratio == 0.5
    page = operator_client.get(response["Location"])
    assert f"Launched job #{job.pk}" in page.text


def test_an_htmx_launch_redirects_the_whole_page(operator_client):
    response = operator_client.post(reverse("launch", args=["sleep"]), launch_data(), **HX)

    assert response.status_code == 200
    assert response["HX-Redirect"] == Job.objects.get().get_absolute_url()


def test_bad_parameters_show_the_errors_and_create_nothing(operator_client):
    response = operator_client.post(
        reverse("launch", args=["sleep"]),
        launch_data(
            **{
                "sleep-items": "0",
                "sleep-limiter": "no-such-limiter",
                "sleep-run-concurrency": "100000",
                "sleep-run-stop_failure_ratio": "0",
            }
        ),
    )

    assert response.status_code == 400
    text = response.text
    assert "Ensure this value is greater than or equal to 1." in text
    assert "no-such-limiter" in text
    assert "Ensure this value is less than or equal to" in text
    assert "Ensure this value is greater than 0." in text
    assert Job.objects.count() == 0


def test_the_engine_s_validation_errors_are_shown_on_the_form(operator_client, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValidationError(["latency_ms: too slow for today", "the queue is closed"])

    monkeypatch.setattr(engine, "launch", refuse)

    response = operator_client.post(reverse("launch", args=["sleep"]), launch_data())

    assert response.status_code == 400
    assert "too slow for today" in response.text
    assert "the queue is closed" in response.text
    assert Job.objects.count() == 0


def test_launching_an_unknown_kind_is_a_404(operator_client):
    response = operator_client.post(reverse("launch", args=["nope"]), launch_data())

    assert response.status_code == 404
    assert Job.objects.count() == 0


# -- The job page and its progress partial ---------------------------------------------------


def test_the_job_page_shows_the_job_its_parameters_and_its_progress(operator_client, job):
    update(job, status=Job.Status.RUNNING, succeeded=4, failed=1, started_at=timezone.now())

    response = operator_client.get(job.get_absolute_url())

    text = response.text
    assert response.status_code == 200
    assert "Sleep (synthetic)" in text and f"#{job.pk}" in text
    assert "<dt>Started by</dt><dd>olivia</dd>" in text
    assert "<dt>Source</dt><dd>Command</dd>" in text
    assert "latency_ms" in text
    assert "<strong>5</strong> of 10 processed" in text
    assert 'hx-get="{}"'.format(reverse("job_progress", args=[job.pk])) in text
    assert 'hx-trigger="every 1s"' in text
    assert "Cancel job" in text


def test_the_progress_partial_is_only_the_partial_and_shows_the_tallies(operator_client, job):
    update(
        job,
        status=Job.Status.RUNNING,
        succeeded=6,
        skipped=1,
        started_at=timezone.now(),
        tallies={"welcome_emails": 5, "reminders": 2},
    )

    response = operator_client.get(reverse("job_progress", args=[job.pk]), **HX)

    assert response.status_code == 200
    text = response.text
    assert "<html" not in text and "<nav" not in text
    assert text.lstrip().startswith('<section id="progress"')
    assert "welcome_emails" in text and "reminders" in text
    assert "<strong>7</strong> of 10 processed" in text
    assert 'hx-trigger="every 1s"' in text


def test_the_progress_partial_answers_286_with_the_final_tallies_once_finished(
    operator_client, job
):
    fail_items(job, ["2"])
    job = finish(job, tallies={"welcome_emails": 9})

    response = operator_client.get(reverse("job_progress", args=[job.pk]), **HX)

    assert response.status_code == 286
    text = response.text
    assert "welcome_emails" in text
    assert "9 succeeded, 1 failed" in text
    assert "completed with errors" in text
    assert 'hx-trigger="every' not in text
    assert "Retry 1 failed" in text
    assert "job-finished" in response["HX-Trigger"]  # the item table reloads once


def test_the_progress_partial_groups_failures_by_error(operator_client, job):
    fail_items(job, ["1", "2", "3"], "TimeoutError", "read timed out")
    fail_items(job, ["4"], "PermanentError", "bad address")
    update(job, status=Job.Status.RUNNING, failed=4)

    text = operator_client.get(reverse("job_progress", args=[job.pk]), **HX).text

    assert text.index("read timed out") < text.index("bad address")
    assert "TimeoutError" in text


def test_reading_progress_and_items_costs_the_same_for_a_big_job(operator_client, operator):
    small = launch_sleep(operator, items=10)
    big = launch_sleep(operator, items=5000)
    for job in (small, big):
        fail_items(job, ["1", "2"])
        update(job, status=Job.Status.RUNNING, failed=2, succeeded=3)

    def queries(url):
        with CaptureQueriesContext(connection) as captured:
            assert operator_client.get(url, **HX).status_code == 200
        return [q["sql"] for q in captured.captured_queries]

    for name in ("job_progress", "job_items"):
        small_queries = queries(reverse(name, args=[small.pk]))
        big_queries = queries(reverse(name, args=[big.pk]))
        assert len(big_queries) == len(small_queries) <= 7
        assert not any("COUNT(" in sql and "GROUP BY" not in sql for sql in big_queries)


def test_the_progress_url_without_htmx_leads_to_the_job_page(operator_client, job):
    response = operator_client.get(reverse("job_progress", args=[job.pk]))

    assert response.status_code == 302
    assert response["Location"] == job.get_absolute_url()


def test_a_missing_job_is_a_404(operator_client):
    assert operator_client.get(reverse("job", args=[999999])).status_code == 404
    assert operator_client.get(reverse("job_progress", args=[999999]), **HX).status_code == 404


# -- The item table --------------------------------------------------------------------------


def test_the_item_table_filters_by_status_and_paginates(operator_client, operator):
    job = launch_sleep(operator, items=130)
    failed_keys = [str(i) for i in range(0, 130, 2)]  # 65 items
    fail_items(job, failed_keys)
    job = finish(job)

    first = operator_client.get(reverse("job_items", args=[job.pk]) + "?status=failed", **HX)
    second = operator_client.get(
        reverse("job_items", args=[job.pk]) + "?status=failed&page=2", **HX
    )

    assert first.status_code == 200
    assert "<html" not in first.text
    assert first.text.count('<span class="badge badge-failed">') == 50
    assert "Page 1 of 2" in first.text
    assert second.text.count('<span class="badge badge-failed">') == 15
    assert "badge-succeeded" not in first.text + second.text
    assert "<code>2</code>" in first.text and "<code>1</code>" not in first.text
    assert "<code>128</code>" in second.text
    # The filter links carry the counts from the job's counters, and real hrefs.
    assert 'Failed <span class="count">65</span>' in first.text
    assert 'Succeeded <span class="count">65</span>' in first.text
    assert f'href="{job.get_absolute_url()}?status=succeeded#items"' in first.text


def test_the_item_table_on_the_full_page_honours_the_filter_in_the_url(operator_client, job):
    fail_items(job, ["3"], message="only this one")
    job = finish(job)

    response = operator_client.get(job.get_absolute_url() + "?status=failed")

    assert response.text.count('<span class="badge badge-failed">') == 1
    assert "only this one" in response.text


def test_the_items_url_without_htmx_leads_to_the_job_page_with_the_filter(operator_client, job):
    response = operator_client.get(reverse("job_items", args=[job.pk]) + "?status=failed&page=2")

    assert response.status_code == 302
    assert response["Location"] == f"{job.get_absolute_url()}?status=failed&page=2#items"


def test_html_in_item_keys_error_messages_and_tallies_is_escaped(operator_client, operator):
    job = engine.launch(
        "sleep",
        {"items": 1, "latency_ms": 0},
        user=operator,
        keys=["<script>alert('key')</script>", "plain"],
    )
    fail_items(job, ["<script>alert('key')</script>"], "Err<b>", "<img src=x onerror=alert(1)>")
    job = finish(job, tallies={"<i>tally</i>": 1})

    page = operator_client.get(job.get_absolute_url()).text
    progress = operator_client.get(reverse("job_progress", args=[job.pk]), **HX).text

    for text in (page, progress):
        assert "<img src=x" not in text
        assert "&lt;img src=x onerror=alert(1)&gt;" in text
        assert "<i>tally</i>" not in text
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;key&#x27;)&lt;/script&gt;" in page
    assert "Err<b>" not in page


# -- Cancel and retry ------------------------------------------------------------------------


def test_cancelling_from_the_job_page_cancels_the_waiting_items(operator_client, job):
    update(job, status=Job.Status.RUNNING)

    response = operator_client.post(reverse("job_cancel", args=[job.pk]), **HX)

    assert response.status_code == 200
    assert response["HX-Redirect"] == job.get_absolute_url()
    job.refresh_from_db()
    assert job.cancel_requested_at is not None
    assert job.status == Job.Status.CANCELLED
    assert job.cancelled == 10
    assert JobItem.objects.filter(job=job, status=JobItem.Status.CANCELLED).count() == 10
    page = operator_client.get(job.get_absolute_url()).text
    assert f"Cancelling job #{job.pk}" in page
    assert "Cancel job" not in page


def test_cancelling_a_finished_job_changes_nothing(operator_client, job):
    job = finish(job)

    response = operator_client.post(reverse("job_cancel", args=[job.pk]), follow=True)

    assert "had already finished" in response.text
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.cancelled == 0


def test_retrying_creates_a_child_job_over_exactly_the_failed_keys(operator_client, operator, job):
    fail_items(job, ["3", "7"])
    job = finish(job)
    page = operator_client.get(job.get_absolute_url()).text
    assert "Retry 2 failed" in page

    response = operator_client.post(reverse("job_retry", args=[job.pk]))

    child = Job.objects.exclude(pk=job.pk).get()
    assert response.status_code == 302
    assert response["Location"] == child.get_absolute_url()
    assert child.parent == job
    assert child.kind == job.kind and child.params == job.params
    assert child.source == Job.Source.DASHBOARD
    assert child.started_by == operator
    assert set(child.items.values_list("key", flat=True)) == {"3", "7"}
    child_page = operator_client.get(child.get_absolute_url()).text
    assert f'href="{job.get_absolute_url()}"' in child_page
    assert f'href="{child.get_absolute_url()}"' in operator_client.get(job.get_absolute_url()).text


def test_retry_is_refused_while_the_job_runs_or_when_nothing_failed(operator_client, operator):
    running = update(launch_sleep(operator), status=Job.Status.RUNNING)
    fail_items(running, ["1"])
    update(running, failed=1)
    clean = finish(launch_sleep(operator))

    for job in (running, clean):
        response = operator_client.post(reverse("job_retry", args=[job.pk]), follow=True)
        assert "has no failed items to retry" in response.text
        assert "failed</button>" not in response.text

    assert Job.objects.count() == 2


# -- The job list ----------------------------------------------------------------------------


def test_the_job_list_filters_by_kind_and_status_and_paginates(operator_client, operator):
    finish(launch_sleep(operator))
    update(launch_sleep(operator), status=Job.Status.RUNNING)
    Job.objects.create(kind="retired_kind", status=Job.Status.SUCCEEDED)
    Job.objects.bulk_create([Job(kind="sleep", status=Job.Status.FAILED) for _ in range(55)])

    def rows(query):
        text = operator_client.get(reverse("job_list") + query).text
        return text.count('<td><span class="badge'), text

    assert rows("?status=running")[0] == 1
    assert rows("?kind=sleep&status=succeeded")[0] == 1
    assert rows("?status=succeeded")[0] == 2
    count, text = rows("?kind=sleep")
    assert count == 50 and "Page 1 of 2" in text
    assert rows("?kind=sleep&page=2")[0] == 7
    assert rows("?status=not-a-status")[0] == 50


# -- Login throttling ------------------------------------------------------------------------


def test_logins_are_refused_after_five_failures_even_with_the_right_password(
    client, operator, redis_db
):
    def log_in(password):
        return client.post(reverse("login"), {"username": "olivia", "password": password})

    failures = [log_in(f"guess-{n}").status_code for n in range(5)]
    refused = log_in("pw-olivia")

    assert failures == [200] * 5
    assert refused.status_code == 429
    assert "Too many failed logins" in refused.text
    assert client.get(reverse("home")).status_code == 302  # not logged in


def test_the_admin_login_counts_failures_with_the_dashboard_s(client, admin_user, redis_db):
    for n in range(5):
        client.post(reverse("admin:login"), {"username": "admin", "password": f"guess-{n}"})

    dashboard = client.post(reverse("login"), {"username": "admin", "password": "password"})
    refused = client.post(reverse("admin:login"), {"username": "admin", "password": "password"})

    assert dashboard.status_code == refused.status_code == 429
    assert client.get(reverse("admin:index")).status_code == 302


def test_a_successful_login_before_the_limit_is_let_in(client, operator, redis_db):
    for n in range(4):
        client.post(reverse("login"), {"username": "olivia", "password": f"guess-{n}"})

    response = client.post(reverse("login"), {"username": "olivia", "password": "pw-olivia"})

    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 200


# -- Input the database or Python cannot take -------------------------------------------------


def test_a_huge_stop_after_consecutive_is_a_form_error(operator_client):
    response = operator_client.post(
        reverse("launch", args=["sleep"]),
        launch_data(**{"sleep-run-stop_after_consecutive": "99999999999"}),
    )

    assert response.status_code == 400
    assert "Ensure this value is less than or equal to 2147483647." in response.text
    assert not Job.objects.exists()


def test_retrying_a_job_whose_parameters_no_longer_validate_says_why(operator_client, operator):
    from scheduler_app.models import Organization

    operator.user_permissions.add(Permission.objects.get(codename="view_contact"))
    acme = Organization.objects.create(name="Acme Health")
    job = engine.launch(
        "send_due_emails", {"organization": "Acme Health"}, user=operator, keys=["1", "2"]
    )
    fail_items(job, ["1"])
    job = finish(job)
    acme.name = "Acme Health Plans"
    acme.save()

    response = operator_client.post(reverse("job_retry", args=[job.pk]), follow=True)

    assert response.status_code == 200
    assert f"Job #{job.pk} cannot be retried" in response.text
    assert "there is no organization named &#x27;Acme Health&#x27;" in response.text
    assert Job.objects.count() == 1


def test_the_admin_retry_action_reports_a_job_it_cannot_retry(admin_client, admin_user):
    from scheduler_app.models import Organization

    acme = Organization.objects.create(name="Acme Health")
    job = engine.launch("send_due_emails", {"organization": "Acme Health"}, keys=["1"])
    fail_items(job, ["1"])
    job = finish(job)
    Organization.objects.filter(pk=acme.pk).update(name="Renamed")

    response = admin_client.post(
        reverse("admin:project_job_changelist"),
        {"action": "retry_failed_items", "_selected_action": [job.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert f"Job #{job.pk} cannot be retried" in response.text
    assert Job.objects.count() == 1


@pytest.mark.parametrize(
    "query",
    [
        "status__exact=%00",
        "kind=%00",
        "created_at__year=99999999999",
        "created_at__year=2020&created_at__month=99999999999999",
    ],
)
def test_admin_list_filters_the_database_cannot_take_are_a_400(admin_client, job, query):
    response = admin_client.get(reverse("admin:project_job_changelist") + "?" + query)

    assert response.status_code == 400
    assert admin_client.get(reverse("admin:project_job_changelist")).status_code == 200


def test_an_item_filter_with_a_nul_is_a_400(admin_client, job):
    url = reverse("admin:project_jobitem_changelist") + "?error_type=%00"
    assert admin_client.get(url).status_code == 400
