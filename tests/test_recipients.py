"""Topic recipients: subscriptions, the import's topic columns, gather_recipients (dry run and
send), its pages, and the export command.

Job-level tests run real RQ workers; sends go to the SMTP sink of test_send.
"""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime
from email import message_from_bytes, policy

import icalendar
import pytest
from django.contrib.auth.models import Permission
from django.core import mail
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from project import engine
from project.kinds import Item, get_kind
from project.models import Job, JobItem
from scheduler_app import importer, recipients
from scheduler_app.models import (
    Contact,
    Delivery,
    Mailing,
    Organization,
    RecipientGroup,
    Subscription,
    Topic,
)
from tests.conftest import ROOT, worker_env
from tests.helpers import wait_for_job
from tests.test_send import SMTPSink, sink_env

SUBSCRIBED, UNSUBSCRIBED = Subscription.Status.SUBSCRIBED, Subscription.Status.UNSUBSCRIBED
STARTS_AT = "2026-12-01T15:00:00+01:00"


@pytest.fixture
def topics(db) -> dict[str, Topic]:
    """The topics the migration creates (a transactional test before this one removed them)."""
    made = {}
    for name, mode in (("calendar", "opt_in"), ("announce", "opt_out"), ("approval", "opt_in")):
        made[name] = Topic.objects.get_or_create(name=name, defaults={"mode": mode})[0]
    return made


def organization(name: str, *emails: str, **fields) -> Organization:
    """An organization with one contact per address."""
    org = Organization.objects.create(name=name, **fields)
    Contact.objects.bulk_create(
        Contact(organization=org, external_id=str(n), email=email)
        for n, email in enumerate(emails, start=1)
    )
    return org


def subscribe(org: Organization, topic: Topic | None, status: str = SUBSCRIBED) -> None:
    """Every contact of the organization makes the same choice."""
    Subscription.objects.bulk_create(
        Subscription(contact=contact, topic=topic, status=status) for contact in org.contacts.all()
    )


def gather(**params) -> Job:
    return engine.launch("gather_recipients", params)


def run_items(job: Job) -> dict[str, object]:
    """Run the job's items in this process, those they add too: key -> outcome or exception.

    Without the engine, so the items' rows do not change.
    """
    kind = get_kind("gather_recipients")
    results = {}
    while todo := JobItem.objects.filter(job=job).exclude(key__in=results).order_by("id"):
        for item in todo:
            try:
                results[item.key] = kind.run_item(job, Item(item.id, item.key, data=item.data))
            except Exception as exc:
                results[item.key] = exc
    return results


def merged(job: Job) -> list[str]:
    return [recipient.address for recipient in recipients.merge(job)]


def addresses(job: Job) -> list[str]:
    """What `export_recipients` prints for a finished job."""
    out = io.StringIO()
    call_command("export_recipients", job.pk, stdout=out, stderr=io.StringIO())
    return out.getvalue().split()


# -- The subscription rule -------------------------------------------------------------------


def expected(mode: str, choices: set[tuple[str, str]]) -> bool:
    """The rule as the issue words it, over choices {(status, "T" or "*")}."""
    unsubscribed = (UNSUBSCRIBED, "T") in choices or (UNSUBSCRIBED, "*") in choices
    opted_in = (SUBSCRIBED, "T") in choices or (SUBSCRIBED, "*") in choices
    return not unsubscribed and (opted_in or mode == "opt_out")


def test_the_subscription_rule_holds_for_every_combination_of_choices(topics):
    org = organization("Acme", "ann@example.com")
    contact = org.contacts.get()
    possible = [(s, t) for s in (SUBSCRIBED, UNSUBSCRIBED) for t in ("T", "*")]
    for name in ("calendar", "announce"):
        topic = topics[name]
        other = topics["approval"]
        for size in range(len(possible) + 1):
            for choices in itertools.combinations(possible, size):
                Subscription.objects.all().delete()
                # A choice about another topic never matters.
                Subscription.objects.create(contact=contact, topic=other, status=UNSUBSCRIBED)
                for status, which in choices:
                    chosen = topic if which == "T" else None
                    Subscription.objects.create(contact=contact, topic=chosen, status=status)
                want = expected(topic.mode, set(choices))
                assert contact.receives(topic) is want, (name, choices)
                assert Contact.objects.receiving(topic).filter(pk=contact.pk).exists() is want


def test_an_unsubscribe_wins_over_an_opt_in_and_star_unsubscribes_from_everything(topics):
    org = organization("Acme", "ann@example.com")
    contact = org.contacts.get()
    subscribe(org, None)  # every topic
    assert contact.receives(topics["calendar"]) and contact.receives(topics["approval"])
    subscribe(org, topics["calendar"], UNSUBSCRIBED)
    assert not contact.receives(topics["calendar"]) and contact.receives(topics["approval"])
    subscribe(org, None, UNSUBSCRIBED)
    assert not any(contact.receives(topic) for topic in topics.values())


# -- Import columns --------------------------------------------------------------------------

HEADER = "id,first_name,last_name,email,state,birth_date,effective_date"


def import_csv(text: str, organization: str = "Acme") -> importer.ImportReport:
    return importer.import_contacts(io.StringIO(text), organization=organization)


def choices_of(external_id: str) -> set[tuple[str, str]]:
    rows = Subscription.objects.filter(contact__external_id=external_id)
    return {(s.status, s.topic.name if s.topic else "*") for s in rows.select_related("topic")}


def test_the_import_records_topics_and_unsubscribes_and_rejects_unknown_topics(topics):
    report = import_csv(
        f"{HEADER},topics,unsubscribed\n"
        "1,Ann,Lee,ann@example.com,TX,,,calendar; Approval,announce\n"
        "2,Bob,Lee,bob@example.com,TX,,,*,calendar\n"
        "3,Cid,Lee,cid@example.com,TX,,,,*\n"
        "4,Dee,Lee,dee@example.com,TX,,,calendar;webinars,\n"
    )

    assert (report.created, report.failed) == (3, 1)
    [error] = report.errors
    assert (error.row, error.field, error.value) == (5, "topics", "calendar;webinars")
    assert "unknown topics 'webinars'" in error.reason
    assert choices_of("1") == {
        (SUBSCRIBED, "calendar"),
        (SUBSCRIBED, "approval"),
        (UNSUBSCRIBED, "announce"),
    }
    assert choices_of("2") == {(SUBSCRIBED, "*"), (UNSUBSCRIBED, "calendar")}
    assert choices_of("3") == {(UNSUBSCRIBED, "*")}
    receives = {c.external_id: c.receives(topics["calendar"]) for c in Contact.objects.all()}
    assert receives == {"1": True, "2": False, "3": False}


def test_a_reimport_replaces_only_the_columns_its_file_has(topics):
    import_csv(f"{HEADER},topics,unsubscribed\n1,Ann,Lee,ann@example.com,TX,,,calendar,announce\n")

    import_csv(f"{HEADER},topics\n1,Ann,Lee,ann@example.com,TX,,,approval\n")
    assert choices_of("1") == {(SUBSCRIBED, "approval"), (UNSUBSCRIBED, "announce")}

    import_csv(f"{HEADER}\n1,Ann,Lee,ann@example.com,TX,,\n")
    assert choices_of("1") == {(SUBSCRIBED, "approval"), (UNSUBSCRIBED, "announce")}

    import_csv(f"{HEADER},unsubscribed\n1,Ann,Lee,ann@example.com,TX,,,\n")
    assert choices_of("1") == {(SUBSCRIBED, "approval")}


# -- Parameters ------------------------------------------------------------------------------


def test_a_launch_is_a_dry_run_unless_told_otherwise(topics):
    organization("Acme")
    assert gather(topic="announce").params["dry_run"] is True
    assert gather(topic="announce", dry_run="true").params["dry_run"] is True
    sending = gather(topic="announce", dry_run="0", kind="announcement", title="Hello")
    assert sending.params["dry_run"] is False
    with pytest.raises(ValidationError, match="dry_run: 'maybe' is not true or false"):
        gather(topic="announce", dry_run="maybe")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"kind": "invite", "starts_at": STARTS_AT}, "title: a send needs a title"),
        ({"title": "Q1 review"}, "starts_at: an invite needs its start"),
        ({"title": "Q1", "starts_at": "2026-12-01T15:00"}, "starts_at: '2026-12-01T15:00' has no"),
        ({"title": "Q1", "starts_at": "next monday"}, "is not an ISO 8601 date and time"),
        ({"title": "Q1", "starts_at": STARTS_AT, "organizer": "nobody"}, "organizer: Enter a"),
    ],
)
def test_a_send_needs_a_title_and_an_invite_a_start_with_its_offset(topics, params, message):
    organization("Acme")
    with pytest.raises(ValidationError, match=message):
        gather(topic="calendar", dry_run="false", **params)


def test_the_same_invite_cannot_be_sent_again_with_other_details(topics):
    organization("Acme")
    Mailing.objects.create(
        topic=topics["calendar"],
        title="Q1 review",
        starts_at=datetime(2026, 12, 1, 14, 0, tzinfo=UTC),  # STARTS_AT in UTC
        duration_minutes=30,
        organizer="olivia@example.com",
        uid="x",
    )
    with pytest.raises(ValidationError, match="duration_minutes: this invite was sent before"):
        gather(
            topic="calendar",
            dry_run="false",
            title="Q1 review",
            starts_at=STARTS_AT,
            duration_minutes="45",
            organizer="olivia@example.com",
        )


def test_every_organization_means_every_active_one_in_name_order(topics):
    organization("Zeta")
    organization("Acme")
    organization("Gone", archived=True)

    job = gather(topic="announce")

    keys = list(JobItem.objects.filter(job=job).order_by("id").values_list("key", flat=True))
    assert keys == ["org:Acme", "org:Zeta"]


# -- Gathering -------------------------------------------------------------------------------


def test_addresses_merge_trimmed_and_case_insensitively_keeping_the_first_spelling(topics):
    organization("Acme", "Ann@Example.com", "bob@example.com", "not an address", "")
    organization("Beta", " ann@example.COM ", "BOB@example.com", "cid@example.com")
    job = gather(topic="announce", organizations="Acme, Beta")

    outcomes = run_items(job)

    assert outcomes["org:Acme"].summary == "2 recipients, 2 invalid addresses dropped"
    assert outcomes["org:Acme"].tallies["invalid"] == 2
    assert merged(job) == ["Ann@Example.com", "bob@example.com", "cid@example.com"]


def test_an_allow_list_keeps_only_its_addresses(topics):
    organization(
        "Test org",
        "ann@example.com",
        "bob@example.com",
        allowed_recipients="ANN@example.com\n  eve@example.com",
    )
    job = gather(topic="announce", organizations="Test org")

    outcomes = run_items(job)

    assert outcomes["org:Test org"].summary == "1 recipient, 1 not on the allow-list"
    assert merged(job) == ["ann@example.com"]


def test_one_failing_organization_fails_alone_and_the_summary_counts_it(workers, topics):
    workers(2)
    organization("Acme", "ann@example.com", "bob@example.com")
    organization("Beta", "BOB@example.com", "cid@example.com")
    organization("Gone", "dee@example.com", archived=True)

    job = wait_for_job(gather(topic="announce", organizations="Acme,Beta,Gone,Nowhere"))

    assert job.status == "completed_with_errors"
    assert job.summary == (
        "📊 Aggregation complete: 3 unique recipients from 4 organizations (2 successful, 2 errors)"
    )
    errors = dict(
        JobItem.objects.filter(job=job, status="failed").values_list("key", "error_message")
    )
    assert errors == {
        "org:Gone": "organization 'Gone' is archived",
        "org:Nowhere": "there is no organization named 'Nowhere'",
    }
    assert addresses(job) == ["ann@example.com", "bob@example.com", "cid@example.com"]
    assert mail.outbox == [] and not Delivery.objects.exists()


def test_when_every_organization_fails_the_job_fails_rather_than_finding_nobody(workers, topics):
    workers(1)
    organization("Acme", "ann@example.com")
    organization("Beta", "bob@example.com")

    job = wait_for_job(gather(topic="webinars", organizations="Acme,Beta"))

    assert job.status == "failed"
    assert job.summary == (
        "📊 Aggregation complete: 0 unique recipients from 2 organizations (0 successful, 2 errors)"
    )
    messages = set(JobItem.objects.filter(job=job).values_list("error_message", flat=True))
    assert messages == {"there is no topic named 'webinars' (topics: announce, approval, calendar)"}
    with pytest.raises(CommandError, match=f"job #{job.pk} failed"):
        addresses(job)


def test_run_job_gathers_a_dry_run_and_prints_the_aggregation_summary(workers, topics):
    workers(1)
    acme = organization("a", "ann@example.com", "bob@example.com")
    beta = organization("b", "Ann@example.com", "cid@example.com")
    subscribe(acme, topics["calendar"])
    subscribe(beta, None)

    done = subprocess.run(
        [sys.executable, "-m", "django", "run_job", "gather_recipients"]
        + ["--param", "topic=calendar", "--param", "organizations=a,b"]
        + ["--param", "dry_run=true", "--wait"],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "📊 Aggregation complete: 3 unique recipients from 2 organizations (2 successful, 0 errors)"
    )
    job = Job.objects.get()
    assert addresses(job) == ["ann@example.com", "bob@example.com", "cid@example.com"]
    assert list(RecipientGroup.objects.filter(job=job).values_list("addresses", flat=True)) == [
        ["ann@example.com", "bob@example.com"],
        ["Ann@example.com", "cid@example.com"],
    ]


# -- Sending ---------------------------------------------------------------------------------


@pytest.fixture
def smtp_sink():
    """The mail relay of test_send, for the workers' sends."""
    sink = SMTPSink()
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    yield sink
    sink.shutdown()
    sink.server_close()


def send_params(**params) -> dict:
    return {
        "topic": "calendar",
        "dry_run": "false",
        "title": "Quarterly review",
        "starts_at": STARTS_AT,
        "duration_minutes": "45",
        "organizer": "olivia@example.com",
        **params,
    }


def test_an_invite_carries_a_valid_calendar_request(topics):
    org = organization("Acme", "ann@example.com")
    subscribe(org, topics["calendar"])
    job = gather(**send_params())

    outcomes = run_items(job)

    [delivery] = Delivery.objects.all()
    assert outcomes[f"to:{delivery.pk}"].summary == "invite to ann@example.com"
    [message] = mail.outbox
    assert (message.subject, message.to) == ("Quarterly review", ["ann@example.com"])
    assert message.reply_to == ["olivia@example.com"]
    [(filename, content, mimetype)] = message.attachments
    assert (filename, mimetype) == ("invite.ics", "text/calendar")
    calendar = icalendar.Calendar.from_ical(content)
    assert calendar["METHOD"] == "REQUEST"
    [event] = calendar.walk("VEVENT")
    assert event.decoded("DTSTART") == datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    assert event.decoded("DTEND") == datetime(2026, 12, 1, 14, 45, tzinfo=UTC)
    text = content if isinstance(content, str) else content.decode()
    assert "DTSTART:20261201T140000Z" in text and "DTEND:20261201T144500Z" in text
    assert str(event["SUMMARY"]) == "Quarterly review"
    assert str(event["ORGANIZER"]) == "mailto:olivia@example.com"
    assert str(event["ATTENDEE"]) == "mailto:ann@example.com"
    assert event["UID"] == Mailing.objects.get().uid
    assert event["UID"].endswith("@batchboard")


def test_an_invite_keeps_its_uid_whatever_offset_names_its_start(topics):
    org = organization("Acme", "ann@example.com")
    subscribe(org, topics["calendar"])
    run_items(gather(**send_params()))
    run_items(gather(**send_params(starts_at="2026-12-01T14:00:00Z")))

    assert Mailing.objects.count() == 1
    uids = {
        icalendar.Calendar.from_ical(m.attachments[0].content).walk("VEVENT")[0]["UID"]
        for m in mail.outbox
    }
    assert len(mail.outbox) == 1 and len(uids) == 1


def test_an_announcement_has_no_calendar_invite(topics):
    organization("Acme", "ann@example.com")
    job = gather(topic="announce", dry_run="false", kind="announcement", title="New office hours")

    run_items(job)

    [message] = mail.outbox
    assert message.subject == "New office hours" and message.attachments == []
    assert "subscribed to announce announcements" in message.body


def test_a_dry_run_sends_nothing(workers, smtp_sink, topics):
    workers(1, **sink_env(smtp_sink))
    organization("Acme", "ann@example.com")

    job = wait_for_job(gather(**send_params(topic="announce", dry_run="true")))

    assert job.status == "succeeded" and job.total == 1
    assert smtp_sink.messages == [] and not Delivery.objects.exists()
    assert not Mailing.objects.exists()


def test_running_an_invite_again_never_sends_twice_to_an_address(workers, smtp_sink, topics):
    workers(2, **sink_env(smtp_sink))
    acme = organization("Acme", *(f"person{n}@example.com" for n in range(30)))
    beta = organization("Beta", "PERSON0@example.com", "bounce@example.com", "new@example.com")
    subscribe(acme, topics["calendar"])
    subscribe(beta, topics["calendar"])

    first = wait_for_job(gather(**send_params(organizations="Acme")))
    second, third = gather(**send_params()), gather(**send_params())
    second, third = wait_for_job(second), wait_for_job(third)

    expected = [f"person{n}@example.com" for n in range(30)] + ["new@example.com"]
    assert smtp_sink.recipients() == Counter(dict.fromkeys(expected, 1))
    assert (first.status, first.tallies["sent"]) == ("succeeded", 30)
    assert second.tallies.get("sent", 0) + third.tallies.get("sent", 0) == 1
    assert second.failed + third.failed >= 1  # bounce@ is refused with a 550
    statuses = dict(Delivery.objects.values_list("address_key", "status"))
    assert statuses["bounce@example.com"] == "failed"
    assert statuses["person0@example.com"] == "sent" and len(statuses) == 32
    assert second.summary == (
        "📊 Aggregation complete: 32 unique recipients from 2 organizations "
        "(2 successful, 0 errors)"
    )
    [(rcpts, data)] = [m for m in smtp_sink.messages if m[0] == ["new@example.com"]]
    message = message_from_bytes(data, policy=policy.default)
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "invite.ics"
    calendar = icalendar.Calendar.from_ical(attachment.get_content())
    assert calendar.walk("VEVENT")[0]["UID"] == Mailing.objects.get().uid


# -- Pages -----------------------------------------------------------------------------------


@pytest.fixture
def looker(client, operator):
    operator.user_permissions.add(*Permission.objects.filter(codename="view_contact"))
    client.force_login(operator)
    return client


def test_the_recipients_page_shows_each_organizations_count_error_and_numbered_list(
    workers, topics, looker
):
    workers(1)
    organization("Acme", "ann@example.com", "Bob@example.com")
    organization("Beta", "bob@example.com", "=cmd@example.com")
    job = wait_for_job(gather(topic="announce", organizations="Acme,Beta,Nowhere"))

    page = looker.get(reverse("job_recipients", args=[job.pk]))
    download = looker.get(reverse("job_recipients_csv", args=[job.pk]))
    job_page = looker.get(job.get_absolute_url())

    html = page.content.decode()
    assert page.status_code == 200
    assert "there is no organization named &#x27;Nowhere&#x27;" in html
    assert '<ol start="1" data-testid="recipients">' in html
    assert html.index("=cmd@example.com") < html.index("ann@example.com") < html.index("Bob@")
    assert download.content.decode().splitlines() == [
        "email,organization",
        "'=cmd@example.com,Beta",
        "ann@example.com,Acme",
        "Bob@example.com,Acme",
    ]
    assert reverse("job_recipients", args=[job.pk]) in job_page.content.decode()


def test_the_recipients_pages_need_the_permission_to_view_contacts(topics, client, operator):
    organization("Acme", "ann@example.com")
    job = gather(topic="announce")
    client.force_login(operator)

    assert client.get(reverse("job_recipients", args=[job.pk])).status_code == 403
    assert client.get(reverse("job_recipients_csv", args=[job.pk])).status_code == 403
    assert client.get(reverse("recipient_jobs")).status_code == 403


def test_the_dashboard_offers_a_dry_run_preselected_and_launches_it(topics, looker):
    organization("Acme", "ann@example.com")

    home = looker.get(reverse("home")).content.decode()
    response = looker.post(
        reverse("launch", args=["gather_recipients"]),
        {
            "gather_recipients-run-concurrency": "10",
            "gather_recipients-topic": "announce",
            "gather_recipients-organizations": "",
            "gather_recipients-dry_run": "true",
            "gather_recipients-kind": "invite",
            "gather_recipients-duration_minutes": "60",
        },
    )

    assert 'value="true" id="id_gather_recipients-dry_run_0" checked' in home
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()
    assert job.params == {
        "topic": "announce",
        "dry_run": True,
        "kind": "invite",
        "duration_minutes": 60,
    }


def test_the_admin_gathers_a_topics_recipients_as_a_dry_run(topics, admin_client):
    organization("Acme", "ann@example.com")
    organization("Gone", "bob@example.com", archived=True)

    response = admin_client.post(
        reverse("admin:scheduler_app_topic_changelist"),
        {"action": "gather_recipients", "_selected_action": [topics["announce"].pk]},
        follow=True,
    )
    contacts = admin_client.get(reverse("admin:scheduler_app_organization_changelist"))

    job = Job.objects.get()
    assert (job.kind, job.source, job.params) == (
        "gather_recipients",
        "admin",
        {"topic": "announce", "dry_run": True},
    )
    assert list(JobItem.objects.filter(job=job).values_list("key", flat=True)) == ["org:Acme"]
    assert reverse("job_recipients", args=[job.pk]) in response.content.decode()
    assert contacts.status_code == 200
