"""The Medicare outreach pages: contacts, a contact's strip, the overview, imports, permissions."""

from __future__ import annotations

import csv
import io
import re
from datetime import date, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.urls import reverse
from django.utils import timezone

from project.engine.planning import run_planner
from project.kinds import Item, get_kind
from project.models import Job
from scheduler_app.models import Contact, ContactImport, Organization, ScheduledEmail
from tests.helpers import wait_for_job

CSV_HEADER = "id,first_name,last_name,email,state,birth_date,effective_date\n"


def grant(user, *codenames: str):
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def staff(client, operator):
    """A logged-in operator who may view and import contacts."""
    grant(operator, "view_contact", "add_contact")
    client.force_login(operator)
    return operator


@pytest.fixture
def acme(db) -> Organization:
    return Organization.objects.create(name="Acme Health")


def make_contact(org, first, last="Lee", state="TX", **fields) -> Contact:
    return Contact.objects.create(
        organization=org,
        external_id=fields.pop("external_id", f"{first}-{last}"),
        first_name=first,
        last_name=last,
        email=fields.pop("email", f"{first.lower()}@example.com"),
        state=state,
        **fields,
    )


def names(response) -> list[str]:
    return re.findall(r'<a href="/contacts/\d+/">([^<]+)</a>', response.content.decode())


# -- Access ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["contacts", "schedule_overview", "contact_import_new"])
def test_every_page_asks_anonymous_visitors_to_log_in(client, db, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_a_user_without_permissions_gets_403_on_every_page(client, viewer, acme):
    c = make_contact(acme, "Ann")
    record = ContactImport.objects.create(filename="a.csv")
    client.force_login(viewer)
    urls = [
        reverse("contacts"),
        reverse("contact", args=[c.pk]),
        reverse("schedule_overview"),
        reverse("schedule_launch"),
        reverse("contact_import_new"),
        reverse("contact_import", args=[record.pk]),
        reverse("contact_import_errors", args=[record.pk]),
    ]
    assert [client.get(url).status_code for url in urls] == [403] * len(urls)
    assert client.post(reverse("schedule_launch"), {}).status_code == 403
    assert not Job.objects.exists()


def test_launching_a_run_needs_the_permission_to_view_contacts(client, operator, acme):
    client.force_login(operator)  # project.add_job only: the run's job page shows contacts

    assert client.get(reverse("schedule_launch")).status_code == 403
    assert client.post(reverse("schedule_launch"), {"today": "2025-03-01"}).status_code == 403
    assert not Job.objects.exists()


def test_viewing_contacts_does_not_allow_importing(client, viewer, acme):
    client.force_login(grant(viewer, "view_contact"))
    assert client.get(reverse("contacts")).status_code == 200
    assert client.get(reverse("contact_import_new")).status_code == 403
    upload = SimpleUploadedFile("c.csv", CSV_HEADER.encode())
    assert client.post(reverse("contact_import_new"), {"file": upload}).status_code == 403


def test_an_unknown_contact_or_import_is_404(client, staff):
    assert client.get(reverse("contact", args=[999999])).status_code == 404
    assert client.get(reverse("contact_import", args=[999999])).status_code == 404


# -- Contacts list ---------------------------------------------------------------------------


def test_the_contacts_list_searches_names_and_emails_and_filters(client, staff, acme):
    other = Organization.objects.create(name="Other")
    make_contact(acme, "Ann", "Smith", state="CA")
    make_contact(acme, "Bob", "Jones", state="TX", email="bob@smithco.example")
    make_contact(other, "Cid", "Smith", state="CA")
    make_contact(other, "Dee", "Brown", state="NV")

    search = client.get(reverse("contacts"), {"q": "smith"})
    by_org = client.get(reverse("contacts"), {"organization": acme.pk})
    by_both = client.get(
        reverse("contacts"), {"q": "smith", "state": "CA", "organization": other.pk}
    )
    bad_filter = client.get(reverse("contacts"), {"state": "ZZ"})

    assert names(search) == ["Bob Jones", "Ann Smith", "Cid Smith"]
    assert names(by_org) == ["Bob Jones", "Ann Smith"]
    assert names(by_both) == ["Cid Smith"]
    assert len(names(bad_filter)) == 4  # an invalid filter is ignored


def test_the_contacts_list_pages_by_50_and_htmx_gets_only_the_results(client, staff, acme):
    for n in range(120):
        make_contact(acme, f"P{n:03d}", "Zed")

    first = client.get(reverse("contacts"))
    third = client.get(reverse("contacts"), {"page": 3}, headers={"HX-Request": "true"})

    assert len(names(first)) == 50
    assert "Page 1 of 3 · 120 contacts" in first.content.decode()
    html = third.content.decode()
    assert names(third) == [f"P{n:03d} Zed" for n in range(100, 120)]
    assert html.lstrip().startswith('<section id="results"') and "<html" not in html
    # Pager links keep a real href next to hx-get, and keep the filters.
    assert 'href="?page=2"' in html and 'hx-get="?page=2"' in html


def test_the_contacts_list_shows_each_contacts_next_pending_email(client, staff, acme):
    ann = make_contact(acme, "Ann")
    ScheduledEmail.objects.create(contact=ann, type="aep", send_date=date(2030, 8, 18))
    ScheduledEmail.objects.create(contact=ann, type="birthday", send_date=date(2030, 3, 1))
    ScheduledEmail.objects.create(
        contact=ann, type="post_window", send_date=date(2029, 1, 1), status="sent"
    )

    html = client.get(reverse("contacts")).content.decode()

    assert re.search(r"Birthday</span>\s*2030-03-01", html)
    assert "2029-01-01" not in html and "2030-08-18" not in html


def test_contact_fields_are_escaped_in_the_list(client, staff, acme):
    make_contact(acme, "<script>alert(1)</script>", email="x@example.com")
    html = client.get(reverse("contacts")).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# -- Contact page ----------------------------------------------------------------------------


def test_the_contact_page_draws_blocked_periods_and_emails_on_the_strip(client, staff, acme):
    today = timezone.localdate()
    # A CA birthday 90 days from now: its blocked period (birthday - 90 d .. + 60 d) starts today.
    birthday = today + timedelta(days=90)
    ca = make_contact(acme, "Ann", state="CA", birth_date=birthday.replace(year=1950))
    email = ScheduledEmail.objects.create(
        contact=ca,
        type="post_window",
        send_date=today + timedelta(days=151),
        reason="post-window after <b>CA</b> window",
    )
    ScheduledEmail.objects.create(
        contact=ca, type="aep", send_date=today - timedelta(days=20), status="sent"
    )

    html = client.get(reverse("contact", args=[ca.pk])).content.decode()

    segments = re.findall(r'class="sch-blocked" style="left: ([\d.]+)%; width: ([\d.]+)%"', html)
    assert segments[0] == ("0.000", f"{100 * 151 / 365:.3f}")
    markers = re.findall(
        r'class="sch-marker sch-type-post_window[^"]*" style="left: ([\d.]+)%"', html
    )
    assert markers == [f"{100 * 151.5 / 365:.3f}"]
    assert (
        f"CA birthday window {birthday - timedelta(days=90)}..{birthday + timedelta(days=60)}"
        in html
    )
    # The reason is escaped; the past, sent email is listed under past emails only.
    assert "post-window after &lt;b&gt;CA&lt;/b&gt; window" in html
    upcoming, past = html.split("<h2>Past emails</h2>")
    assert email.send_date.isoformat() in upcoming
    assert (today - timedelta(days=20)).isoformat() in past


def test_a_contact_the_rules_cannot_use_shows_why_instead_of_periods(client, staff, acme):
    bad = make_contact(acme, "Zed", state="ZZ")
    html = client.get(reverse("contact", args=[bad.pk])).content.decode()
    assert "The rules cannot use this contact: state: &#x27;ZZ&#x27; is not a US state code" in html
    assert 'class="sch-blocked"' not in html


# -- Schedule overview -----------------------------------------------------------------------


def test_the_overview_counts_emails_by_week_type_and_status(client, staff, acme):
    monday = timezone.localdate() - timedelta(days=timezone.localdate().weekday())
    ann, bob = make_contact(acme, "Ann"), make_contact(acme, "Bob")
    week = monday + timedelta(weeks=3)
    for c in (ann, bob):
        ScheduledEmail.objects.create(contact=c, type="aep", send_date=week)
        ScheduledEmail.objects.create(contact=c, type="birthday", send_date=week + timedelta(1))
    ScheduledEmail.objects.create(contact=ann, type="post_window", send_date=week, status="sent")
    ScheduledEmail.objects.create(contact=ann, type="aep", send_date=monday + timedelta(weeks=60))

    response = client.get(reverse("schedule_overview"))

    bars = response.context["chart"]["bars"]
    assert len(bars) == 52
    assert [bar["total"] for bar in bars if bar["total"]] == [5]
    assert bars[3]["week"] == week
    assert {s["type"]: s["n"] for s in bars[3]["segments"]} == {
        "aep": 2,
        "birthday": 2,
        "post_window": 1,
    }
    assert bars[3]["segments"][0]["height"] == "40.000"  # 2 of the tallest week's 5
    totals = {row["type"]: row["counts"] for row in response.context["totals"]}
    statuses = [s.value for s in response.context["statuses"]]
    assert totals["post_window"][statuses.index("sent")] == 1
    assert totals["aep"][statuses.index("pending")] == 2  # the email 60 weeks out is not counted
    assert response.context["grand_total"] == 5


def test_the_overview_can_show_one_organization(client, staff, acme):
    other = Organization.objects.create(name="Other")
    week = timezone.localdate() + timedelta(days=10)
    ScheduledEmail.objects.create(contact=make_contact(acme, "Ann"), type="aep", send_date=week)
    ScheduledEmail.objects.create(contact=make_contact(other, "Bob"), type="aep", send_date=week)

    response = client.get(
        reverse("schedule_overview"), {"organization": other.pk}, headers={"HX-Request": "true"}
    )

    assert response.context["grand_total"] == 1
    assert response.content.decode().lstrip().startswith('<div id="overview">')


def test_launching_a_run_from_the_schedule_page_redirects_to_its_job(client, operator, acme):
    client.force_login(grant(operator, "view_contact"))  # project.add_job and view_contact
    make_contact(acme, "Ann")
    make_contact(Organization.objects.create(name="Other"), "Bob")

    form = client.get(reverse("schedule_launch"))
    response = client.post(
        reverse("schedule_launch"), {"organization": "Acme Health", "today": "2025-03-01"}
    )
    refused = client.post(reverse("schedule_launch"), {"organization": "Nope"})

    assert form.status_code == 200
    job = Job.objects.get()
    assert response.status_code == 302 and response.url == reverse("job", args=[job.pk])
    # The launch returns at once: a worker's planner adds the contacts.
    assert (job.kind, job.source, job.started_by, job.status) == (
        "schedule_emails",
        Job.Source.DASHBOARD,
        operator,
        "planning",
    )
    run_planner(job.pk)
    job.refresh_from_db()
    assert job.total == 1
    page = client.get(reverse("job", args=[job.pk]))
    assert page.status_code == 200
    assert job.params == {"organization": "Acme Health", "today": "2025-03-01"}
    assert refused.status_code == 400
    assert "there is no organization named &#x27;Nope&#x27;" in refused.content.decode()


# -- Imports ---------------------------------------------------------------------------------


def upload(
    client,
    text: str | bytes,
    organization: str = "Acme Health",
    name: str = "c.csv",
    run: bool = True,
):
    """Upload a file on the Import page, then (`run`) run its job's items as a worker would."""
    data = text.encode() if isinstance(text, str) else text
    response = client.post(
        reverse("contact_import_new"),
        {"file": SimpleUploadedFile(name, data, "text/csv"), "organization": organization},
    )
    if run and response.status_code == 302:
        job = ContactImport.objects.get(pk=response.url.split("/")[-2]).job
        kind = get_kind(job.kind)
        for item in job.items.order_by("id"):
            kind.run_item(job, Item(item.pk, item.key))
        finish_job(job)
    return response


def finish_job(job: Job) -> None:
    """Mark the job finished, as the engine does once its last item settled."""
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.SUCCEEDED, succeeded=job.total, finished_at=timezone.now()
    )


def test_an_upload_imports_contacts_and_reports_bad_rows_with_a_csv(client, staff, db):
    rows = (
        CSV_HEADER
        + "1,Ann,Lee,ann@example.com,TX,1950-03-01,\n"
        + "2,Bob,Ray,bob@example.com,<i>,1950-03-01,\n"
        + "3,Cy,Fox,cy@example.com,CA,3/4/2999,\n"
    )

    response = upload(client, rows)

    record = ContactImport.objects.get()
    assert response.status_code == 302 and response.url == reverse(
        "contact_import", args=[record.pk]
    )
    assert (record.job.kind, record.job.started_by, record.job.total) == (
        "import_contacts",
        staff,
        1,
    )
    assert list(Contact.objects.values_list("external_id", flat=True)) == ["1"]
    assert (record.rows, record.created, record.failed, record.created_by) == (3, 1, 2, staff)
    page = client.get(response.url)
    html = page.content.decode()
    assert [(e["row"], e["field"], e["value"]) for e in page.context["errors"]] == [
        ("3", "state", "<i>"),
        ("4", "birth_date", "3/4/2999"),
    ]
    assert "<code>&lt;i&gt;</code>" in html  # values from the file are escaped
    assert "Download report CSV" in html
    assert reverse("contact_import_errors", args=[record.pk]) in html
    download = client.get(reverse("contact_import_errors", args=[record.pk]))
    assert download["Content-Type"] == "text/csv; charset=utf-8"
    assert (
        download["Content-Disposition"] == f'attachment; filename="import-{record.pk}-report.csv"'
    )
    report = list(csv.DictReader(io.StringIO(download.content.decode())))
    assert [(r["row"], r["field"]) for r in report] == [("3", "state"), ("4", "birth_date")]


def test_a_second_upload_of_the_same_rows_updates_them(client, staff, db):
    grant(staff, "change_contact")
    upload(client, CSV_HEADER + "1,Ann,Lee,ann@example.com,TX,1950-03-01,\n")
    upload(client, CSV_HEADER + "1,Anna,Lee,ann@example.com,TX,1950-03-01,\n")

    second = ContactImport.objects.first()
    assert (second.created, second.updated) == (0, 1)
    assert Contact.objects.get().first_name == "Anna"


def test_without_change_contact_an_upload_only_creates_and_reports_updates_as_bad_rows(
    client, staff, acme
):
    make_contact(acme, "Ann", external_id="1")
    rows = (
        CSV_HEADER
        + "1,Mallory,Lee,ann@example.com,TX,1950-03-01,\n"
        + "2,Bob,Ray,bob@example.com,TX,1950-03-01,\n"
        + "2,Robert,Ray,bob@example.com,TX,1950-03-01,\n"
    )

    upload(client, rows)

    record = ContactImport.objects.get()
    assert (record.rows, record.created, record.updated, record.failed) == (3, 1, 0, 2)
    assert sorted(Contact.objects.values_list("first_name", flat=True)) == ["Ann", "Bob"]
    report = list(csv.DictReader(io.StringIO(record.errors_csv)))
    assert [(r["row"], r["field"], r["value"]) for r in report] == [
        ("2", "id", "1"),
        ("4", "id", "2"),
    ]
    assert "permission to change contacts" in report[0]["reason"]


def test_a_file_without_the_required_columns_is_a_form_error(client, staff, db):
    response = upload(client, "name,email\nAnn,ann@example.com\n")

    assert response.status_code == 400
    assert response.context["form"].errors["file"]
    assert not Contact.objects.exists() and not ContactImport.objects.exists()


def test_a_file_that_is_not_utf8_is_a_form_error_naming_the_byte(client, staff, db):
    latin1 = (CSV_HEADER + "1,José,Lee,jose@example.com,TX,1950-03-01,\n").encode("latin-1")

    response = upload(client, latin1)

    assert response.status_code == 400
    [error] = response.context["form"].errors["file"]
    assert "not UTF-8" in error and "0xe9" in error
    assert not Contact.objects.exists()


class RecordingUploadHandler(FileUploadHandler):
    """Stands where Django stores uploads (after the size limit): records what reaches it."""

    received: list[int] = []

    def receive_data_chunk(self, raw_data, start):
        self.received.append(len(raw_data))
        return raw_data

    def file_complete(self, file_size):
        return None


def test_a_file_over_the_size_limit_is_refused_before_it_is_stored(client, staff, settings):
    settings.MAX_UPLOAD_MB = 1
    settings.FILE_UPLOAD_HANDLERS = [
        "project.uploads.SizeLimitUploadHandler",
        "tests.test_scheduler_views.RecordingUploadHandler",
    ]
    RecordingUploadHandler.received = []
    row = "1,Ann,Lee,ann@example.com,TX,1950-03-01,\n"

    response = upload(client, CSV_HEADER + row * (1024 * 1024 // len(row) + 100))

    assert response.status_code == 400
    assert response.context["form"].errors["file"] == [
        "The file is larger than the limit of 1 MB; import it with "
        "`manage.py import_contacts` instead."
    ]
    assert RecordingUploadHandler.received == []
    assert not ContactImport.objects.exists() and not Job.objects.exists()


def test_a_file_under_the_size_limit_reaches_the_storage(client, staff, settings):
    settings.FILE_UPLOAD_HANDLERS = [
        "project.uploads.SizeLimitUploadHandler",
        "tests.test_scheduler_views.RecordingUploadHandler",
        "django.core.files.uploadhandler.MemoryFileUploadHandler",
    ]
    RecordingUploadHandler.received = []

    response = upload(client, CSV_HEADER + "1,Ann,Lee,ann@example.com,TX,1950-03-01,\n")

    assert response.status_code == 302
    assert sum(RecordingUploadHandler.received) > 0


def test_the_upload_is_imported_by_a_job_in_parts_with_file_line_numbers(
    client, staff, db, monkeypatch
):
    monkeypatch.setattr("scheduler_app.importer.PART_ROWS", 2)
    rows = (
        CSV_HEADER
        + "1,Ann,Lee,ann@example.com,TX,1950-03-01,\n"
        + '2,"Bob\nBy",Ray,bob@example.com,ZZ,1950-03-01,\n'  # a value over two lines
        + "3,Cy,Fox,cy@example.com,CA,1950-03-01,\n"
        + "4,Di,Ng,not-an-address,CA,1950-03-01,\n"
        + "5,Ed,Ox,ed@example.com,TX,1950-03-01,\n"
    )

    response = upload(client, rows, run=False)

    record = ContactImport.objects.get()
    job = record.job
    assert not Contact.objects.exists()  # nothing imported inside the request
    assert [(p.number, p.first_line) for p in record.parts.all()] == [(1, 2), (2, 5), (3, 7)]
    assert sorted(job.items.values_list("key", flat=True)) == ["1", "2", "3"]
    assert client.get(job.get_absolute_url()).status_code == 200
    running = client.get(response.url, headers={"HX-Request": "true"})
    assert running.status_code == 200 and 'hx-trigger="every 1s"' in running.text

    kind = get_kind("import_contacts")
    outcomes = [kind.run_item(job, Item(i.pk, i.key)) for i in job.items.order_by("id")]
    again = kind.run_item(job, Item(0, "1"))  # a part run twice counts once
    finish_job(job)

    record.refresh_from_db()
    assert [o.tallies["rows"] for o in outcomes] == [2, 2, 1]
    assert again.status == "skipped"
    assert (record.rows, record.created, record.failed) == (5, 3, 2)
    report = list(csv.DictReader(io.StringIO(record.errors_csv)))
    assert [(r["row"], r["field"]) for r in report] == [("3", "state"), ("6", "email")]
    assert not any(bytes(p.data) for p in record.parts.all())  # emptied once imported
    done = client.get(response.url, headers={"HX-Request": "true"})
    assert done.status_code == 286 and "every 1s" not in done.text
    download = client.get(reverse("contact_import_errors", args=[record.pk]))
    assert download.content.decode() == record.errors_csv


def test_an_upload_is_imported_by_real_workers(client, staff, workers):
    workers(1)
    rows = "".join(f"{n},P{n},Lee,p{n}@example.com,TX,1950-03-01,\n" for n in range(3000))

    response = upload(client, CSV_HEADER + rows + "x,Bad,Row,bad,ZZ,,\n", run=False)

    record = ContactImport.objects.get()
    wait_for_job(record.job)
    record.refresh_from_db()
    assert record.job.status == Job.Status.SUCCEEDED
    assert record.job.tallies == {"rows": 3001, "created": 3000, "updated": 0, "bad_rows": 1}
    assert (record.rows, record.created, record.failed) == (3001, 3000, 1)
    page = client.get(response.url)
    assert [(e["row"], e["field"]) for e in page.context["errors"]][0] == ("3002", "email")


def test_import_jobs_are_not_launched_from_the_dashboard(client, operator, db):
    grant(operator, "view_contact", "add_contact")
    client.force_login(operator)

    home = client.get(reverse("home"))
    launch = client.post(reverse("launch", args=["import_contacts"]), {})

    assert "import_contacts-contact_import" not in home.content.decode()
    assert launch.status_code == 404


# -- Admin -----------------------------------------------------------------------------------


def test_the_admin_lists_search_and_keeps_import_reports_read_only(admin_client, acme):
    ann = make_contact(acme, "Ann", external_id="EXT-42")
    make_contact(acme, "Bob")
    ScheduledEmail.objects.create(contact=ann, type="aep", send_date=date(2030, 8, 18))
    record = ContactImport.objects.create(filename="a.csv", rows=3)

    orgs = admin_client.get(reverse("admin:scheduler_app_organization_changelist"))
    found = admin_client.get(reverse("admin:scheduler_app_contact_changelist"), {"q": "EXT-42"})
    emails = admin_client.get(
        reverse("admin:scheduler_app_scheduledemail_changelist"), {"q": "ann"}
    )
    report = admin_client.get(reverse("admin:scheduler_app_contactimport_change", args=[record.pk]))

    assert orgs.context["cl"].result_list[0].contacts_count == 2
    assert [c.pk for c in found.context["cl"].result_list] == [ann.pk]
    assert emails.context["cl"].result_count == 1
    assert report.status_code == 200 and b'name="_save"' not in report.content
    assert admin_client.get(reverse("admin:scheduler_app_contactimport_add")).status_code == 403


@pytest.mark.parametrize("contact_ids", ["²", "1,²", "9" * 5000, "99999999999999999999"])
def test_contact_ids_that_are_not_ids_are_a_form_error(client, operator, acme, contact_ids):
    client.force_login(grant(operator, "view_contact"))

    response = client.post(
        reverse("schedule_launch"), {"today": "2025-03-01", "contact_ids": contact_ids}
    )

    assert response.status_code == 400
    assert "is not a contact id" in response.content.decode()
    assert not Job.objects.exists()


def test_admin_date_filters_past_year_9999_are_a_400(admin_client, db):
    url = reverse("admin:scheduler_app_scheduledemail_changelist")
    assert admin_client.get(url + "?send_date__year=99999999999").status_code == 400
    assert admin_client.get(url + "?status__exact=%00").status_code == 400
    contacts = reverse("admin:scheduler_app_contact_changelist")
    assert admin_client.get(contacts + "?created_at__year=-1").status_code == 400


@pytest.mark.parametrize("today", ["9999-12-31", "1899-01-01"])
def test_a_run_date_out_of_range_is_a_form_error_and_launches_nothing(
    client, operator, acme, today
):
    client.force_login(grant(operator, "view_contact"))
    make_contact(acme, "Ann")

    response = client.post(reverse("schedule_launch"), {"today": today})

    assert response.status_code == 400
    assert f"the run date {today} is outside 2000-01-01..2099-12-31" in response.content.decode()
    assert not Job.objects.exists()
