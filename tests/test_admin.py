"""The admin: job and item changelists, the cancel and retry actions, django-rq's dashboard."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from project.models import Job, JobItem
from tests.test_views import fail_items, finish, launch_sleep, update


@pytest.fixture
def jobs(admin_user) -> dict[str, Job]:
    running = update(launch_sleep(admin_user, items=5), status=Job.Status.RUNNING)
    failed = launch_sleep(admin_user, items=6)
    fail_items(failed, ["1", "4"], "TimeoutError", "read timed out")
    return {"running": running, "failed": finish(failed), "clean": finish(launch_sleep(None))}


def test_the_job_changelist_lists_jobs_and_filters_them(admin_client, jobs):
    url = reverse("admin:project_job_changelist")

    everything = admin_client.get(url)
    running = admin_client.get(url, {"status__exact": "running"})
    by_kind = admin_client.get(url, {"kind": "sleep", "source__exact": "command"})
    by_id = admin_client.get(url, {"q": str(jobs["failed"].pk)})
    by_text = admin_client.get(url, {"q": "sleep"})

    assert everything.status_code == 200
    assert everything.context["cl"].result_count == 3
    assert list(running.context["cl"].result_list) == [jobs["running"]]
    assert by_kind.context["cl"].result_count == 3
    assert list(by_id.context["cl"].result_list) == [jobs["failed"]]
    assert by_text.context["cl"].result_count == 3
    assert "Cancel selected jobs" in everything.text
    assert "Retry failed items of selected jobs" in everything.text


def test_the_job_change_page_links_to_its_items_instead_of_listing_them(admin_client, jobs):
    job = jobs["failed"]

    page = admin_client.get(reverse("admin:project_job_change", args=[job.pk]))
    items_url = reverse("admin:project_jobitem_changelist") + f"?job__exact={job.pk}"
    items = admin_client.get(items_url)

    assert page.status_code == 200
    assert f'href="{items_url}"' in page.text.replace("&amp;", "&")
    assert 'name="total"' not in page.text  # counters are read-only
    assert items.status_code == 200
    assert items.context["cl"].result_count == 6


def test_the_item_changelist_filters_by_status_and_error_type(admin_client, jobs):
    url = reverse("admin:project_jobitem_changelist")

    failed = admin_client.get(url, {"status__exact": "failed"})
    timeouts = admin_client.get(url, {"error_type": "TimeoutError"})
    searched = admin_client.get(url, {"q": "timed out"})

    assert failed.status_code == 200
    assert sorted(i.key for i in failed.context["cl"].result_list) == ["1", "4"]
    assert timeouts.context["cl"].result_count == 2
    assert searched.context["cl"].result_count == 2


def test_items_cannot_be_edited_in_the_admin(admin_client, jobs):
    item = JobItem.objects.filter(job=jobs["failed"]).first()

    page = admin_client.get(reverse("admin:project_jobitem_change", args=[item.pk]))
    admin_client.post(
        reverse("admin:project_jobitem_change", args=[item.pk]),
        {"key": "changed", "status": "succeeded", "attempts": 9},
    )

    assert page.status_code == 200
    assert 'name="key"' not in page.text
    item.refresh_from_db()
    assert item.key != "changed"


def test_the_cancel_action_cancels_running_jobs_and_says_so(admin_client, jobs):
    response = admin_client.post(
        reverse("admin:project_job_changelist"),
        {"action": "cancel_jobs", "_selected_action": [jobs["running"].pk, jobs["clean"].pk]},
        follow=True,
    )

    running = Job.objects.get(pk=jobs["running"].pk)
    assert running.status == Job.Status.CANCELLED
    assert running.cancelled == 5
    assert Job.objects.get(pk=jobs["clean"].pk).status == Job.Status.SUCCEEDED
    text = response.text
    assert "Cancelled 1 jobs." in text
    assert "1 jobs had already finished" in text


def test_the_retry_action_launches_a_retry_of_the_failed_items(admin_client, admin_user, jobs):
    parent = jobs["failed"]

    response = admin_client.post(
        reverse("admin:project_job_changelist"),
        {"action": "retry_failed_items", "_selected_action": [parent.pk, jobs["running"].pk]},
        follow=True,
    )

    child = Job.objects.get(parent=parent)
    assert child.source == Job.Source.ADMIN
    assert child.started_by == admin_user
    assert set(child.items.values_list("key", flat=True)) == {"1", "4"}
    assert Job.objects.count() == 4
    assert f"Launched retry jobs #{child.pk} (2 items)." in response.text
    assert "1 jobs were skipped" in response.text


def test_staff_who_may_only_view_jobs_get_no_actions(client, django_user_model, jobs):
    staff = django_user_model.objects.create_user("sam", password="pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_job"))
    client.force_login(staff)
    url = reverse("admin:project_job_changelist")

    page = client.get(url)
    for action in ("cancel_jobs", "retry_failed_items"):
        client.post(url, {"action": action, "_selected_action": [jobs["running"].pk]})

    assert page.status_code == 200
    assert "Cancel selected jobs" not in page.text
    assert "Retry failed items" not in page.text
    assert Job.objects.get(pk=jobs["running"].pk).cancel_requested_at is None
    assert Job.objects.count() == 3


def test_the_admin_index_links_to_the_django_rq_dashboard_which_loads(admin_client, redis_db):
    index = admin_client.get(reverse("admin:index"))
    dashboard = admin_client.get(reverse("admin:django_rq_dashboard_changelist"))

    assert index.status_code == 200
    assert "Django-RQ" in index.text
    assert reverse("admin:django_rq_dashboard_changelist") in index.text
    assert dashboard.status_code == 200
    assert "default" in dashboard.text  # the queue the batch engine uses


def test_only_superusers_reach_the_django_rq_pages(client, django_user_model, redis_db):
    import django_rq

    queue = django_rq.get_queue("default", autocommit=True)  # not after a commit: now
    queue.enqueue("project.jobs.run_chunk", 0)
    staff = django_user_model.objects.create_user("sam", password="pw", is_staff=True)
    staff.user_permissions.add(*Permission.objects.all())  # every permission, still not root
    client.force_login(staff)
    dashboard = reverse("admin:django_rq_dashboard_changelist")
    empty = reverse("admin:django_rq_clear", args=[0])

    index = client.get(reverse("admin:index"))
    pages = [client.get(dashboard), client.get(empty), client.post(empty)]
    stats = client.get(reverse("admin:django_rq_home_json"))

    assert dashboard not in index.text
    assert [page.status_code for page in pages] == [403, 403, 403]
    assert stats.status_code == 403
    assert queue.count == 1  # not emptied
    client.logout()
    assert client.get(empty).status_code == 302  # anonymous: to the admin login
