"""The schedule_emails kind: the spec's worked examples through real workers, re-runs, positions."""

from __future__ import annotations

import subprocess
import sys
from datetime import date

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from project import engine
from project.engine.planning import run_planner
from project.kinds import Item, PermanentError, get_kind
from project.models import Job, JobItem
from scheduler_app.models import Contact, Organization, ScheduledEmail
from tests.conftest import ROOT, worker_env
from tests.helpers import wait_for_job


def contact(org: Organization, state: str, birth: str | None, effective: str | None, **fields):
    return Contact.objects.create(
        organization=org,
        external_id=fields.pop("external_id", f"{org.pk}-{Contact.objects.count() + 1}"),
        first_name=fields.pop("first_name", state),
        state=state,
        birth_date=date.fromisoformat(birth) if birth else None,
        effective_date=date.fromisoformat(effective) if effective else None,
        **fields,
    )


def emails_of(c: Contact, status: str | None = None) -> list[tuple[str, str]]:
    emails = ScheduledEmail.objects.filter(contact=c).order_by("send_date", "type")
    if status:
        emails = emails.filter(status=status)
    return [(e.type, e.send_date.isoformat()) for e in emails]


def run_in_process(job: Job) -> dict:
    """Run a launched job's items through the kind in this process, in claim order."""
    kind = get_kind(job.kind)
    items = [Item(i.pk, i.key, data=i.data) for i in JobItem.objects.filter(job=job).order_by("id")]
    outcomes = {}
    for start in range(0, len(items), kind.batch_size):
        outcomes.update(kind.run_batch(job, items[start : start + kind.batch_size]))
    return outcomes


def schedule(today: str, **params) -> Job:
    """Launch a schedule run and plan its items here (a worker's planner task would)."""
    job = engine.launch("schedule_emails", {"today": today, **params})
    assert job.status == Job.Status.PLANNING
    run_planner(job.pk)
    job.refresh_from_db()
    return job


# The spec's worked examples, grouped by run date. Contacts are created in this order, so their
# ids ascend in it: within a run, FL is the third eligible contact (position 2), NY takes no
# position, and a filler without dates (AZ) pushes LA to position 4, which is week 1 again.
EXAMPLES = {
    "2025-03-01": [
        ("TX", "1955-05-20", "2015-11-01",
         [("birthday", "2025-05-06"), ("aep", "2025-08-18"), ("effective_date", "2025-10-02")]),
    ],
    "2025-01-01": [
        ("CA", "1950-12-15", "2010-12-20", [("post_window", "2025-02-14"), ("aep", "2025-08-18")]),
        ("NY", "1950-03-03", "2010-03-03", []),
        ("KY", "1951-09-01", None, [("post_window", "2025-11-01")]),
        ("FL", "1952-02-29", "2015-07-01",
         [("birthday", "2025-02-14"), ("effective_date", "2025-06-01"), ("aep", "2025-09-01")]),
        ("AZ", None, None, [("aep", "2025-09-07")]),
        ("LA", None, "2011-02-01", [("effective_date", "2025-01-02"), ("aep", "2025-08-18")]),
    ],
    "2025-06-01": [
        ("NV", "1952-08-17", "2012-01-01",
         [("post_window", "2025-10-01"), ("effective_date", "2025-12-02")]),
        ("MO", "1950-01-10", "2018-09-01",
         [("post_window", "2025-10-05"), ("birthday", "2025-12-27")]),
    ],
    "2024-01-01": [
        ("IL", "1948-06-15", "2000-06-20", [("post_window", "2024-07-31"), ("aep", "2024-08-18")]),
        ("AZ", None, None, [("aep", "2024-08-25")]),
        ("AZ", None, None, [("aep", "2024-09-01")]),
        ("AZ", None, None, [("aep", "2024-09-07")]),
        ("IL", "1947-06-15", "2000-06-20",
         [("effective_date", "2024-05-21"), ("aep", "2024-08-18")]),
    ],
}  # fmt: skip


def test_the_spec_worked_examples_run_by_two_workers_produce_exactly_the_spec_emails(workers):
    workers(2)
    expected = {}
    for today, rows in EXAMPLES.items():
        org = Organization.objects.create(name=f"examples {today}")
        for state, birth, effective, emails in rows:
            expected[contact(org, state, birth, effective).pk] = emails
        # Bad data in one run: each fails alone, naming the field and the value.
        if today == "2025-06-01":
            zz = contact(org, "ZZ", "1950-01-01", None)
            future = contact(org, "TX", "2025-07-01", None)

    jobs = {today: schedule(today, organization=f"examples {today}") for today in EXAMPLES}
    jobs = {today: wait_for_job(job) for today, job in jobs.items()}

    for pk, emails in expected.items():
        assert emails_of(Contact.objects.get(pk=pk)) == sorted(emails, key=lambda e: (e[1], e[0]))
    january = jobs["2025-01-01"]
    assert (january.status, january.succeeded, january.skipped, january.failed) == (
        Job.Status.SUCCEEDED, 5, 1, 0
    )  # fmt: skip
    assert {k: v for k, v in january.tallies.items() if not k.endswith("_ms")} == {
        "emails": 9, "aep": 4, "birthday": 1, "effective_date": 2, "post_window": 2
    }  # fmt: skip
    june = jobs["2025-06-01"]
    assert (june.status, june.succeeded, june.failed) == (Job.Status.COMPLETED_WITH_ERRORS, 2, 2)
    errors = dict(
        JobItem.objects.filter(job=june, status="failed").values_list("key", "error_message")
    )
    assert errors == {
        f"{zz.pk}": "state: 'ZZ' is not a US state code",
        f"{future.pk}": "birth_date: '2025-07-01' is after today (2025-06-01)",
    }
    assert not ScheduledEmail.objects.filter(contact__in=[zz, future]).exists()
    ny = JobItem.objects.get(job=january, status="skipped")
    assert ny.result == "year-round state NY: no emails"


def test_a_rerun_replaces_pending_emails_so_a_changed_birth_date_moves_the_email(db):
    org = Organization.objects.create(name="acme")
    tx = contact(org, "TX", "1955-05-20", "2015-11-01")
    first = schedule("2025-03-01")
    run_in_process(first)
    tx.birth_date = date(1955, 12, 20)
    tx.save()

    second = schedule("2025-03-01")
    run_in_process(second)

    assert emails_of(tx) == [
        ("aep", "2025-08-18"), ("effective_date", "2025-10-02"), ("birthday", "2025-12-06")
    ]  # fmt: skip
    # The moved email comes from the second run; unchanged ones keep their row and first run.
    jobs = dict(ScheduledEmail.objects.filter(contact=tx).values_list("type", "job"))
    assert jobs == {"birthday": second.pk, "aep": first.pk, "effective_date": first.pk}
    birthday = ScheduledEmail.objects.get(contact=tx, type="birthday")
    assert birthday.reason == "birthday 2025-12-20 - 14 days"


def test_a_rerun_keeps_unchanged_emails_and_refreshes_a_changed_reason(db):
    org = Organization.objects.create(name="acme")
    tx = contact(org, "TX", "1955-05-20", "2015-11-01")
    run_in_process(schedule("2025-03-01"))
    before = dict(ScheduledEmail.objects.filter(contact=tx).values_list("type", "id"))
    ScheduledEmail.objects.filter(pk=before["aep"]).update(reason="an old rule's reason")

    second = schedule("2025-03-01")
    run_in_process(second)

    after = {e.type: e for e in ScheduledEmail.objects.filter(contact=tx)}
    assert {kind: e.pk for kind, e in after.items()} == before
    assert after["aep"].reason == "AEP week 1 of 2025 (assigned week 1)"
    assert after["aep"].job_id == second.pk


def test_sent_emails_are_kept_and_never_scheduled_twice(db):
    org = Organization.objects.create(name="acme")
    tx = contact(org, "TX", "1955-05-20", "2015-11-01")
    run_in_process(schedule("2025-03-01"))
    birthday = ScheduledEmail.objects.get(contact=tx, type="birthday")
    ScheduledEmail.objects.filter(pk=birthday.pk).update(status="sent", sent_at=timezone.now())
    failed = ScheduledEmail.objects.get(contact=tx, type="aep")
    ScheduledEmail.objects.filter(pk=failed.pk).update(status="failed", error="550 no such user")

    run_in_process(schedule("2025-03-01"))

    assert ScheduledEmail.objects.filter(contact=tx).count() == 3
    assert ScheduledEmail.objects.get(pk=birthday.pk).status == "sent"
    assert ScheduledEmail.objects.get(pk=failed.pk).status == "failed"
    assert emails_of(tx, "pending") == [("effective_date", "2025-10-02")]


def test_pending_emails_outside_the_horizon_or_being_sent_are_left_alone(db):
    org = Organization.objects.create(name="acme")
    tx = contact(org, "TX", "1955-05-20", "2015-11-01")
    overdue = ScheduledEmail.objects.create(contact=tx, type="birthday", send_date=date(2025, 2, 1))
    beyond = ScheduledEmail.objects.create(contact=tx, type="aep", send_date=date(2026, 8, 18))
    sending = ScheduledEmail.objects.create(
        contact=tx, type="post_window", send_date=date(2025, 4, 1), claimed_at=timezone.now()
    )
    stale = ScheduledEmail.objects.create(
        contact=tx, type="post_window", send_date=date(2025, 4, 2)
    )

    run_in_process(schedule("2025-03-01"))

    remaining = set(ScheduledEmail.objects.filter(contact=tx).values_list("pk", flat=True))
    assert {overdue.pk, beyond.pk, sending.pk} <= remaining
    assert stale.pk not in remaining


def test_aep_positions_count_only_eligible_contacts_in_ascending_id(db):
    org = Organization.objects.create(name="acme")
    plain = [contact(org, "AZ", None, None) for _ in range(3)]
    contact(org, "NY", None, None)  # year-round: no position
    contact(org, "ZZ", None, None)  # invalid: no position, fails
    plain += [contact(org, "TX", None, None) for _ in range(4)]

    outcomes = run_in_process(schedule("2025-01-01"))

    weeks = {"2025-08-18": 1, "2025-08-25": 2, "2025-09-01": 3, "2025-09-07": 4}
    assert [weeks[emails_of(c)[0][1]] for c in plain] == [1, 2, 3, 4, 1, 2, 3]
    assert sum(isinstance(o, PermanentError) for o in outcomes.values()) == 1


def test_an_organization_run_covers_only_that_organizations_contacts(db):
    acme, other = Organization.objects.create(name="acme"), Organization.objects.create(name="b")
    mine = contact(acme, "TX", "1955-05-20", None)
    theirs = contact(other, "TX", "1955-05-20", None)

    job = schedule("2025-03-01", organization="acme")
    run_in_process(job)

    assert job.total == 1
    assert emails_of(mine) and not emails_of(theirs)


def test_an_unknown_organization_is_refused_with_its_name(db):
    with pytest.raises(ValidationError) as exc:
        schedule("2025-03-01", organization="Nope Inc")
    assert "there is no organization named 'Nope Inc'" in exc.value.messages[0]
    assert not Job.objects.exists()


def test_the_run_date_defaults_to_today(db):
    job = engine.launch("schedule_emails", {})
    assert job.params == {"today": timezone.localdate().isoformat()}


def test_the_admin_action_schedules_only_the_selected_contacts(admin_client):
    org = Organization.objects.create(name="acme")
    contacts = [contact(org, "AZ", None, None) for _ in range(4)]
    chosen = [contacts[1], contacts[3]]

    response = admin_client.post(
        reverse("admin:scheduler_app_contact_changelist"),
        {"action": "schedule_emails", "_selected_action": [c.pk for c in chosen]},
        follow=True,
    )

    job = Job.objects.get()
    assert (job.kind, job.source, job.total) == ("schedule_emails", Job.Source.ADMIN, 2)
    assert reverse("job", args=[job.pk]) in response.content.decode()
    job.params["today"] = "2025-01-01"  # a fixed date, so the AEP weeks below are known
    run_in_process(job)
    # Positions count among the selection: the two chosen contacts take weeks 1 and 2.
    assert [emails_of(c) for c in chosen] == [[("aep", "2025-08-18")], [("aep", "2025-08-25")]]
    assert not emails_of(contacts[0])


def test_run_job_schedules_from_the_command_line_and_waits(workers):
    workers(2)
    org = Organization.objects.create(name="Acme Health")
    tx = contact(org, "TX", "1955-05-20", "2015-11-01")
    command = [sys.executable, "manage.py", "run_job", "schedule_emails"]

    done = subprocess.run(
        [*command, "--param", "organization=Acme Health", "--param", "today=2025-03-01", "--wait"],
        cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    refused = subprocess.run(
        [*command, "--param", "organization=Nope"],
        cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "1 items" in done.stdout and "1 succeeded" in done.stdout
    assert len(emails_of(tx)) == 3
    assert refused.returncode == 2
    assert "there is no organization named 'Nope'" in refused.stderr


def test_the_demo_loads_varied_contacts_once_and_schedules_them(db):
    config = apps.get_app_config("scheduler_app")

    first = config.load_demo()
    second = config.load_demo()

    assert Organization.objects.count() == 3 and Contact.objects.count() == 1500
    states = set(Contact.objects.values_list("state", flat=True))
    assert {"CA", "NV", "MO", "IL", "KY", "NY", "TX", "FL"} <= states
    assert Contact.objects.filter(birth_date__isnull=True).exists()
    job = Job.objects.get()
    assert (job.kind, job.source, job.status) == ("schedule_emails", "schedule", "planning")
    run_planner(job.pk)  # as a worker would
    job.refresh_from_db()
    assert job.total == 1500
    assert f"job #{job.pk}" in first and "already" in second
