"""Job kinds of the Medicare outreach: schedule emails for contacts, send the ones that are due.

`schedule_emails` is a batch kind: the rules compute >100k contacts/s, so the cost is the
database, and a batch of 500 contacts takes a handful of queries (load the contacts, read
their pending emails, delete the stale ones, insert the new ones) instead of thousands.

AEP positions. A contact's AEP week depends on its position among the run's *eligible*
contacts in ascending id, but batches run concurrently on several workers, so no batch can
count the eligible contacts before it. Positions are therefore fixed by the planner
(`ScheduleEmailsKind.plan`), which runs after launch as its own task: pages of contacts in
id order, counting eligible contacts as it goes, each item keyed by the contact id with
{"position": n} as its data; the cursor "<last id>:<position>" lets a planner that died
resume. A contact that is not eligible when planned gets the position the next eligible
contact gets; it is only used if an edit made the contact eligible before its batch ran. A
retry of failed items keeps the positions of the original run.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from functools import lru_cache

import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from project import llm
from project.engine import bound_cursor
from project.kinds import Item, JobKind, Outcome, Page, PermanentError, TransientError, register
from project.mail import EmailMessage
from project.models import Job
from project.ratelimit import get_limiter
from scheduler_app import briefs, importer, recipients, rules
from scheduler_app.forms import (
    BriefsForm,
    GatherRecipientsForm,
    ImportJobForm,
    ScheduleForm,
    SendForm,
    parse_id_list,
)
from scheduler_app.models import (
    Contact,
    ContactImportPart,
    DailyBrief,
    Delivery,
    Organization,
    RecipientGroup,
    ScheduledEmail,
    Topic,
)

INSERT_BATCH = 5000
PLAN_PAGE = 10_000  # contacts a planner page reads and adds


def horizon_end(today: date) -> date:
    """The last day of the run's horizon (today .. today + 364, both inclusive)."""
    return today + timedelta(days=rules.HORIZON_DAYS - 1)


def schedule_pages(
    contacts: QuerySet[Contact], today: date, cursor: str = "", page_size: int = PLAN_PAGE
) -> Iterator[Page]:
    """Pages of items (contact id, {"position": n}) in ascending id, after `cursor`."""
    last_id, _, position = cursor.partition(":")
    last_id, position = int(last_id or 0), int(position or 0)
    fields = ("id", "state", "birth_date", "effective_date")
    while True:
        rows = list(contacts.filter(id__gt=last_id).order_by("id").values_list(*fields)[:page_size])
        if not rows:
            return
        items = []
        for contact_id, state, birth_date, effective_date in rows:
            items.append((str(contact_id), {"position": position}))
            try:
                data = rules.parse_contact(state, birth_date, effective_date, today)
            except rules.RuleError:
                continue
            if rules.is_eligible(data):
                position += 1
        last_id = rows[-1][0]
        yield Page(items, f"{last_id}:{position}")


def schedule_items(contacts: QuerySet[Contact], today: date) -> Iterator[tuple[str, dict]]:
    """Every item of `schedule_pages` (the admin action launches a selection with these)."""
    for page in schedule_pages(contacts, today):
        yield from page.items


def contacts_of(params: dict) -> QuerySet[Contact]:
    """The contacts a schedule run covers: all, one organization's, or the listed ids."""
    contacts = Contact.objects.all()
    if params.get("organization"):
        contacts = contacts.filter(organization__name=params["organization"])
    if params.get("contact_ids"):
        contacts = contacts.filter(id__in=parse_id_list(params["contact_ids"]))
    return contacts


def empty_tallies() -> dict[str, int]:
    return {"emails": 0} | dict.fromkeys(rules.EMAIL_TYPES, 0)


@register
class ScheduleEmailsKind(JobKind):
    name = "schedule_emails"
    label = "Schedule Medicare emails"
    description = (
        "Recompute every contact's emails for the next 365 days: pending ones are replaced, "
        "sent ones are kept."
    )
    form_class = ScheduleForm
    # Items name contacts, and their results the emails scheduled for them.
    view_permission = "scheduler_app.view_contact"
    batch_size = 500
    default_concurrency = 4

    def plan(self, job: Job, cursor: str) -> Iterator[Page]:
        return schedule_pages(
            contacts_of(job.params), date.fromisoformat(job.params["today"]), cursor
        )

    def run_batch(self, job: Job, items: list[Item]) -> dict[str, Outcome | Exception]:
        """Schedule a batch of contacts: one query to read, then NewEmails.save() writes.

        1. Load the contacts' rule fields in one query (rule_fields_of).
        2. Compute each valid contact's emails; a contact with bad data fails alone and its
           pending emails are left as they are.
        3. Make the valid contacts' pending emails inside the horizon equal to the new
           computation (NewEmails.save).
        """
        today = date.fromisoformat(job.params["today"])
        keys, positions = {}, {}
        for item in items:
            contact_id = int(item.key)
            keys[contact_id] = item.key
            positions[contact_id] = (item.data or {}).get("position", 0)
        rows = rule_fields_of(list(keys))
        outcomes: dict[str, Outcome | Exception] = {}
        valid_ids = []
        new_emails = NewEmails()
        begin = time.perf_counter()
        for contact_id, state, birth_date, effective_date in rows:
            key = keys[contact_id]
            try:
                data = rules.parse_contact(state, birth_date, effective_date, today)
            except rules.RuleError as err:
                outcomes[key] = PermanentError(str(err))
                continue
            valid_ids.append(contact_id)
            tallies = empty_tallies()
            if data.state in rules.YEAR_ROUND_STATES:
                outcomes[key] = Outcome(
                    "skipped", f"year-round state {data.state}: no emails", tallies
                )
                continue
            emails = rules.compute_emails(data, today, positions[contact_id])
            for email in emails:
                tallies[email.type] += 1
                new_emails.add(contact_id, email)
            tallies["emails"] = len(emails)
            if emails:
                outcomes[key] = Outcome("succeeded", ", ".join(map(label, emails)), tallies)
            else:
                outcomes[key] = Outcome("skipped", "no emails in the horizon", tallies)
        compute_s = time.perf_counter() - begin
        for contact_id, key in keys.items():
            if key not in outcomes:
                outcomes[key] = Outcome("skipped", f"contact {contact_id} no longer exists")
        begin = time.perf_counter()
        new_emails.save(job.pk, valid_ids, today)
        write_s = time.perf_counter() - begin
        # Where the time goes, summed over the run into the job's tallies (benchmarks read it).
        timing = next((o for o in outcomes.values() if isinstance(o, Outcome)), None)
        if timing is not None:
            timing.tallies = timing.tallies | {
                "compute_ms": round(compute_s * 1000),
                "write_ms": round(write_s * 1000),
            }
        return outcomes


@lru_cache(maxsize=16384)
def label(email: rules.Email) -> str:
    """`aep 2025-08-18`, for an item's summary; rules.Email objects are shared, so is this."""
    return f"{email.type} {email.date}"


INSERT_SQL = """
INSERT INTO {table} (contact_id, type, send_date, reason, job_id, status, error, created_at)
SELECT c, t, d, r, %s, 'pending', '', %s
FROM unnest(%b::bigint[], %b::text[], %b::date[], %b::text[]) AS e(c, t, d, r)
ON CONFLICT (contact_id, type, send_date) DO NOTHING
"""


CONTACTS_SQL = """
SELECT id, state, birth_date, effective_date FROM {table} WHERE id = ANY(%b::bigint[])
"""


def rule_fields_of(contact_ids: list[int]) -> list[tuple]:
    """(id, state, birth_date, effective_date) of the contacts that still exist.

    On PostgreSQL one statement with the ids as a binary array: through the ORM, building
    and reading 500 rows took six times the CPU (BENCHMARKS.md).
    """
    if connection.vendor == "postgresql":
        with bound_cursor() as cursor:
            cursor.execute(CONTACTS_SQL.format(table=Contact._meta.db_table), [contact_ids])
            return cursor.fetchall()
    return list(
        Contact.objects.filter(id__in=contact_ids).values_list(
            "id", "state", "birth_date", "effective_date"
        )
    )


# Every email of the listed contacts, one index probe per contact. The contact is the only
# condition, and OFFSET 0 keeps the subquery per contact: with stale statistics (a table just
# filled by a first run), a plain `contact_id IN (...)` got a sequential scan of the table per
# batch, and a status or date condition the partial index of all pending emails by date.
EMAILS_OF_SQL = """
SELECT e.id, e.contact_id, e.type, e.send_date, e.reason, e.status, e.claimed_at
FROM unnest(%b::bigint[]) AS c(id)
CROSS JOIN LATERAL (SELECT * FROM {table} AS e WHERE e.contact_id = c.id OFFSET 0) AS e
"""


def emails_of(contact_ids: list[int]) -> list[tuple]:
    """(id, contact_id, type, send_date, reason, status, claimed_at) of the contacts' emails."""
    if connection.vendor == "postgresql":
        with bound_cursor() as cursor:
            cursor.execute(EMAILS_OF_SQL.format(table=ScheduledEmail._meta.db_table), [contact_ids])
            return cursor.fetchall()
    return list(
        ScheduledEmail.objects.filter(contact_id__in=contact_ids).values_list(
            "id", "contact_id", "type", "send_date", "reason", "status", "claimed_at"
        )
    )


class NewEmails:
    """A batch's newly computed emails, and how they replace the contacts' pending ones.

    A re-run computes mostly the emails that are already there, so rather than deleting and
    re-inserting every row (which rewrote ~2 rows per contact and bloated the table), save()
    compares: rows no longer computed go, new ones come, unchanged ones stay as they are
    (with the job that first scheduled them).
    """

    def __init__(self) -> None:
        self.emails: dict[tuple[int, str, date], str] = {}  # (contact, type, date) -> reason

    def add(self, contact_id: int, email: rules.Email) -> None:
        self.emails[contact_id, email.type, email.date] = email.reason

    def save(self, job_id: int, contact_ids: list[int], today: date) -> None:
        """Replace the contacts' pending emails inside the horizon with the new ones.

        1. Read their pending emails inside the horizon.
        2. Delete those not computed any more, unless claimed: send_due_emails is sending
           a claimed one right now and will record how that ended.
        3. Insert the new ones, ignoring any that exist already (sent, failed, claimed...):
           the unique (contact, type, send_date) constraint keeps emails from duplicating.
        4. Give unchanged emails whose reason changed the new reason and this job.
        """
        end = horizon_end(today)
        with transaction.atomic():
            if connection.vendor == "postgresql":
                # Short queries: JIT compiling them (costed high on stale statistics) took
                # 25 times longer than running them.
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL jit = off")
            existing = {
                (contact_id, kind, day): (pk, reason, claimed_at)
                for pk, contact_id, kind, day, reason, status, claimed_at in emails_of(contact_ids)
                if status == ScheduledEmail.Status.PENDING and today <= day <= end
            }
            stale = [
                pk
                for key, (pk, _, claimed_at) in existing.items()
                if key not in self.emails and claimed_at is None
            ]
            if stale:
                # The conditions again: a sender may have claimed one since it was read.
                ScheduledEmail.objects.pending().filter(
                    id__in=stale, claimed_at__isnull=True
                ).delete()
            self.insert(job_id, [key for key in self.emails if key not in existing])
            changed = [
                ScheduledEmail(id=existing[key][0], reason=reason, job_id=job_id)
                for key, reason in self.emails.items()
                if key in existing and existing[key][1] != reason
            ]
            ScheduledEmail.objects.bulk_update(changed, ["reason", "job"])

    def insert(self, job_id: int, keys: list[tuple[int, str, date]]) -> None:
        """Insert new pending emails: one INSERT ... SELECT FROM unnest(arrays) on PostgreSQL.

        Four array parameters, bound on the server in binary (engine.bound_cursor), instead
        of a model instance and eight parameters per email, which made Django's bulk_create
        the slowest step of a run. Elsewhere (SQLite for local runs) bulk_create.
        """
        if not keys:
            return
        if connection.vendor == "postgresql":
            contact_ids, types, dates = (list(column) for column in zip(*keys, strict=True))
            reasons = [self.emails[key] for key in keys]
            with bound_cursor() as cursor:
                cursor.execute(
                    INSERT_SQL.format(table=ScheduledEmail._meta.db_table),
                    [job_id, timezone.now(), contact_ids, types, dates, reasons],
                )
            return
        ScheduledEmail.objects.bulk_create(
            [
                ScheduledEmail(
                    contact_id=c, type=t, send_date=d, reason=self.emails[c, t, d], job_id=job_id
                )
                for c, t, d in keys
            ],
            batch_size=INSERT_BATCH,
            ignore_conflicts=True,
        )


# -- Sending ---------------------------------------------------------------------------------


def render_email(email: ScheduledEmail) -> tuple[str, str]:
    """(subject, body) from scheduler_app/emails/<type>.txt, whose first line is "Subject: ..."."""
    contact = email.contact
    # Names go on one line: a newline in one would end the subject line early.
    text = render_to_string(
        f"scheduler_app/emails/{email.type}.txt",
        {
            "contact": contact,
            "first_name": " ".join(contact.first_name.split()) or "there",
            "organization": " ".join(contact.organization.name.split()),
            "email": email,
        },
    )
    first, _, body = text.lstrip().partition("\n")
    return " ".join(first.removeprefix("Subject:").split()), body.strip() + "\n"


def is_transient_send(exc: Exception) -> bool:
    """Whether a send failure may pass on a retry: lost connections, timeouts, 4xx replies.

    Redis errors count too: the rate limiter lives there, and nothing was sent.
    """
    if isinstance(exc, redis.RedisError):
        return True
    if isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError):
        return True
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(400 <= code < 500 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, TimeoutError | ConnectionError)


@register
class SendDueEmailsKind(JobKind):
    name = "send_due_emails"
    label = "Send due Medicare emails"
    description = "Send every pending email dated on or before a day, each exactly once."
    form_class = SendForm
    # Send results show contacts' email addresses.
    view_permission = "scheduler_app.view_contact"
    limiter = "smtp"
    default_concurrency = 10

    def item_keys(self, job: Job) -> Iterable[str]:
        emails = ScheduledEmail.objects.due(date.fromisoformat(job.params["on_or_before"]))
        if job.params.get("organization"):
            emails = emails.filter(contact__organization__name=job.params["organization"])
        ids = emails.order_by("send_date", "id").values_list("id", flat=True)
        return (str(pk) for pk in ids.iterator(chunk_size=5000))

    def run_item(self, job: Job, item: Item) -> Outcome:
        """Send one email at most once.

        1. Wait for the shared SMTP rate limiter.
        2. Claim the email with a conditional UPDATE; if another sender holds it, or it is no
           longer pending, skip it. A claim older than the lease is a sender that died
           before it recorded anything: it is taken over, so the email goes out later
           rather than never (the engine re-runs the item once its lease lapses).
        3. Render the template and send.
        4. Mark it sent. A transient failure releases the claim for the engine's retry; a
           permanent one marks the email failed with the error.
        """
        get_limiter("smtp").acquire()
        now = timezone.now()
        abandoned = now - timedelta(seconds=settings.BATCH_LEASE_SECONDS)
        claimed = (
            ScheduledEmail.objects.filter(pk=item.key, status=ScheduledEmail.Status.PENDING)
            .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=abandoned))
            .update(claimed_at=now)
        )
        if not claimed:
            return Outcome("skipped", "already claimed or no longer pending")
        email = ScheduledEmail.objects.select_related("contact__organization").get(pk=item.key)
        address = email.contact.email.strip()
        if not address:
            self.settle(email, ScheduledEmail.Status.SKIPPED, error="contact has no email address")
            return Outcome("skipped", "contact has no email address")
        try:
            subject, body = render_email(email)
            # Reference: https://docs.djangoproject.com/en/6.1/topics/email/#emailmessage-objects
            # The default mailer of settings.MAILERS (console locally, SMTP when EMAIL_HOST is set).
            if not EmailMessage(subject, body, to=[address]).send():
                raise PermanentError(f"the mailer accepted no message for {address!r}")
        except Exception as exc:
            error = str(exc) if isinstance(exc, PermanentError) else f"{type(exc).__name__}: {exc}"
            if is_transient_send(exc):
                # Nothing went out: give the email back so the retry (or a later run) sends it.
                ScheduledEmail.objects.filter(pk=email.pk).update(claimed_at=None, error=error)
                raise TransientError(error) from exc
            self.settle(email, ScheduledEmail.Status.FAILED, error=error[:2000])
            raise PermanentError(error) from exc
        self.settle(email, ScheduledEmail.Status.SENT, sent_at=timezone.now())
        return Outcome("succeeded", f"{email.type} to {address}", {"sent": 1, email.type: 1})

    @staticmethod
    def settle(email: ScheduledEmail, status: str, **fields) -> None:
        """Record how the claimed email ended; the claim stays so nobody picks it up again."""
        ScheduledEmail.objects.filter(pk=email.pk).update(status=status, **fields)


# -- Importing -------------------------------------------------------------------------------


@register
class ImportContactsKind(JobKind):
    """An upload from the Import page, imported one part (importer.PART_ROWS rows) per item.

    Launched by the upload view with concurrency 1: parts are claimed in item order, so a
    later row of the file with the same id wins, as in the command.
    """

    name = "import_contacts"
    label = "Import contacts"
    description = "Import a CSV file uploaded on the Import page."
    form_class = ImportJobForm
    # Its report lists rows of the file; the import pages need the same permission.
    view_permission = "scheduler_app.add_contact"
    # Launched from the Import page only: it needs an upload.
    launch_from_dashboard = False
    default_concurrency = 1

    def item_keys(self, job: Job) -> Iterable[str]:
        parts = ContactImportPart.objects.filter(contact_import_id=job.params["contact_import"])
        return (str(n) for n in parts.order_by("number").values_list("number", flat=True))

    def run_item(self, job: Job, item: Item) -> Outcome:
        part = ContactImportPart.objects.defer("data").get(
            contact_import_id=job.params["contact_import"], number=int(item.key)
        )
        report = importer.import_part(part)
        if report is None:
            return Outcome("skipped", "imported already")
        tallies = {
            "rows": report.rows,
            "created": report.created,
            "updated": report.updated,
            "bad_rows": report.failed,
        }
        summary = (
            f"{report.rows:,} rows from line {part.first_line}: {report.created:,} created, "
            f"{report.updated:,} updated, {report.failed:,} bad"
        )
        return Outcome("succeeded", summary, tallies)


# -- Topic recipients ------------------------------------------------------------------------


@register
class GatherRecipientsKind(JobKind):
    """A topic's recipients from each organization, merged; in a send, one email to each.

    Items are organizations, and in a send also deliveries, which the organizations' items
    add as they resolve (scheduler_app/recipients.py has the design).
    """

    name = recipients.KIND
    label = "Gather topic recipients"
    description = (
        "Ask each organization for a topic's recipients and merge them. A dry run shows them; "
        "a send mails an invite or announcement to each address once."
    )
    form_class = GatherRecipientsForm
    # Items and the recipients page show addresses.
    view_permission = "scheduler_app.view_contact"
    limiter = "smtp"
    default_concurrency = 10

    def item_keys(self, job: Job) -> list[tuple[str, dict]]:
        names = recipients.organization_names(job.params.get("organizations", ""))
        if not names:
            names = Organization.objects.active().order_by("name").values_list("name", flat=True)
        return recipients.organization_items(names)

    def run_item(self, job: Job, item: Item) -> Outcome:
        if "delivery" in (item.data or {}):
            return self.send(job, int(item.data["delivery"]))
        return self.gather(job, item.data["organization"], item.data["position"])

    def gather(self, job: Job, name: str, position: int) -> Outcome:
        """Resolve one organization's recipients; in a send, queue a delivery for each."""
        organization = Organization.objects.filter(name=name).first()
        if organization is None:
            raise PermanentError(f"there is no organization named {name!r}")
        if organization.archived:
            raise PermanentError(f"organization {name!r} is archived")
        topic_name = job.params["topic"]
        topic = Topic.objects.filter(name=topic_name).first()
        if topic is None:
            known = ", ".join(Topic.objects.values_list("name", flat=True))
            raise PermanentError(f"there is no topic named {topic_name!r} (topics: {known})")
        found = recipients.resolve(organization, topic)
        RecipientGroup.objects.update_or_create(
            job=job,
            organization=organization,
            defaults={
                "position": position,
                "addresses": found.addresses,
                "contacts": found.contacts,
                "invalid": found.invalid,
                "not_allowed": found.not_allowed,
            },
        )
        count = len(found.addresses)
        summary = f"{count:,} recipient{'' if count == 1 else 's'}"
        if found.invalid:
            summary += f", {found.invalid:,} invalid addresses dropped"
        if found.not_allowed:
            summary += f", {found.not_allowed:,} not on the allow-list"
        if not job.params.get("dry_run", True):
            mailing = recipients.mailing_for(job.params, topic)
            queued = recipients.queue_deliveries(job, mailing, found.addresses)
            summary += f"; {queued:,} sends queued"
        tallies = {
            "organizations": 1,
            "recipients": len(found.addresses),
            "invalid": found.invalid,
            "not_allowed": found.not_allowed,
        }
        return Outcome("succeeded", summary, tallies)

    def send(self, job: Job, delivery_id: int) -> Outcome:
        """Send one delivery at most once, as SendDueEmailsKind.run_item sends an email.

        1. Wait for the shared SMTP rate limiter.
        2. Claim the delivery with a conditional UPDATE: not sent, and unclaimed or claimed
           by a sender that died (older than the lease). Else skip it.
        3. Build the email (with invite.ics for an invite) and send it.
        4. Mark it sent. A transient failure releases the claim for the engine's retry; a
           permanent one marks it failed, claim released, so a later run may try again.
        """
        get_limiter("smtp").acquire()
        claimed = (
            Delivery.objects.claimable()
            .filter(pk=delivery_id)
            .update(claimed_at=timezone.now(), job=job)
        )
        delivery = Delivery.objects.select_related("mailing__topic").get(pk=delivery_id)
        if not claimed:
            if delivery.status == Delivery.Status.SENT:
                return Outcome("skipped", f"sent to {delivery.address} before", {"already_sent": 1})
            return Outcome("skipped", f"another job is sending to {delivery.address}")
        address, mailing = delivery.address, delivery.mailing
        try:
            if not recipients.mailing_email(mailing, address).send():
                raise PermanentError(f"the mailer accepted no message for {address!r}")
        except Exception as exc:
            error = str(exc) if isinstance(exc, PermanentError) else f"{type(exc).__name__}: {exc}"
            if is_transient_send(exc):
                Delivery.objects.filter(pk=delivery_id).update(claimed_at=None, error=error)
                raise TransientError(error) from exc
            Delivery.objects.filter(pk=delivery_id).update(
                status=Delivery.Status.FAILED, claimed_at=None, error=error[:2000]
            )
            raise PermanentError(error) from exc
        Delivery.objects.filter(pk=delivery_id).update(
            status=Delivery.Status.SENT, sent_at=timezone.now(), error=""
        )
        return Outcome("succeeded", f"{mailing.kind} to {address}", {"sent": 1})

    def summary_line(self, job: Job) -> str:
        return recipients.summary_line(job) or job.summary_line()

    def results_url(self, job: Job) -> str:
        return reverse("job_recipients", args=[job.pk])


# -- Daily briefs ----------------------------------------------------------------------------


@register
class DailyBriefsKind(JobKind):
    """One brief per item (keyed by user id, its DailyBrief id in `data`): build, summarize,
    email. Launched every hour by `schedule_briefs` (scheduler_app/briefs.py), or by hand."""

    name = briefs.KIND
    label = "Daily briefs"
    description = (
        "Build each user's brief (a section per organization they own, a summary) and email it."
    )
    form_class = BriefsForm
    # Briefs show organizations' figures and jobs' errors to their own users only.
    view_permission = "scheduler_app.view_dailybrief"
    limiter = "openai"
    default_concurrency = 20
    timeout = 120

    def item_keys(self, job: Job) -> Iterable[tuple[str, dict]]:
        return briefs.launch_keys(job.params)

    def warm_up(self) -> None:
        llm.warm_up()
        briefs.warm_up()

    def claimed(self, job: Job, items: list[Item]) -> None:
        """Load the briefs of the items this runner claimed, all in one query (briefs.prefetch)."""
        brief_ids = [
            item.data["brief"]
            for item in items
            if isinstance(item.data, dict) and isinstance(item.data.get("brief"), int)
        ]
        briefs.prefetch(brief_ids, job.pk)

    def record(self, job: Job, records: list[tuple[int, datetime]]) -> None:
        """Mark the emailed briefs sent, with their items' results (see `email`)."""
        briefs.mark_sent(records)

    def run_item(self, job: Job, item: Item) -> Outcome:
        """Build one brief and email it, each at most once.

        1. Load the brief, its user and organizations (on a database thread, as every query
           here: see briefs.DatabaseThreads), or take them as loaded ahead with the other
           items the runner claimed (`claimed`).
        2. If it is still pending: build its sections concurrently, write the summary (the
           model, or the template), and store both unless another run stored them first;
           the same conditional UPDATE claims the email when the user wants one.
        3. Otherwise, if the user wants email, claim it with a conditional UPDATE. Send it
           through the `smtp` limiter and record how it went: a sent email with the item's
           result (`record`), a failure at once. A transient failure gives the claim back
           for the engine's retry, which finds the brief built and only sends.
        """
        db = briefs.database_threads()
        brief_id = (item.data or {}).get("brief")
        if brief_id is None:
            raise PermanentError("the item names no brief")
        ctx = briefs.context_for(brief_id, job.pk, item.deadline)
        if ctx is None:
            return Outcome("skipped", "the brief no longer exists")
        who = f"brief of {ctx.username} for {ctx.brief_date}"
        tallies: dict[str, int] = {}
        written = None  # the email's subject and body, once the UPDATE storing it claimed it
        if ctx.status == DailyBrief.Status.PENDING:
            sections = briefs.build_sections(ctx, item.deadline)
            summary = briefs.write_summary(ctx, sections, item.deadline)
            # The email is claimed by the same UPDATE that stores the brief. While a database
            # thread runs it, this thread takes the email's turn in the `smtp` limiter and
            # writes the email (both are dropped if another run stored the brief first).
            claim = ctx.email_enabled and bool(ctx.email)
            saving = db.submit(briefs.save_built, ctx, sections, summary, job.pk, claim)
            email = None
            if claim:
                get_limiter("smtp").acquire()
                email = briefs.render_email(ctx, {"sections": sections, "summary": summary.text})
            if saving.result(timeout=briefs.seconds_left(item.deadline)):
                written = email
                failed = sum(1 for s in sections if s.get("error"))
                tallies = {
                    "briefs": 1,
                    f"{summary.source}_summaries": 1,
                    "reengagement": int(ctx.is_reengagement),
                    "failed_sections": failed,
                    "llm_tokens": summary.tokens,
                }
                who += f": {len(sections)} sections" + (f", {failed} failed" if failed else "")
                who += f", {summary.source} summary"
            else:
                ctx = db.run(briefs.load_context, brief_id, job.pk, deadline=item.deadline)
        elif ctx.built_by == job.pk and item.attempt > 1:
            # An earlier attempt of this item built it, then failed to email it: count it here.
            tallies = {"briefs": 1, f"{ctx.summary_source}_summaries": 1}
        if not (ctx.email_enabled and ctx.status == DailyBrief.Status.READY):
            if tallies:
                return Outcome("succeeded", who, tallies)
            return Outcome("skipped", f"{who}: {ctx.status} already")
        return self.email(ctx, item, who, tallies, written)

    def email(
        self, ctx, item: Item, who: str, tallies: dict, written: tuple[str, str] | None = None
    ) -> Outcome:
        """Send the built brief: `written` (its subject and body) when run_item claimed the
        email and took the limiter's turn already, else after both."""
        db = briefs.database_threads()
        if not ctx.email:
            db.run(briefs.update_brief, ctx.brief_id, {"error": "the user has no email address"})
            return Outcome("succeeded", f"{who}; not emailed: no address", tallies)
        if written is None:
            get_limiter("smtp").acquire()
            if not db.run(briefs.claim_email, ctx.brief_id, deadline=item.deadline):
                return Outcome(
                    "succeeded" if tallies else "skipped", f"{who}; email claimed already", tallies
                )
        try:
            subject, body = written or briefs.render_email(ctx)
            # Reference: https://docs.djangoproject.com/en/6.1/topics/email/#emailmessage-objects
            if not EmailMessage(subject, body, to=[ctx.email]).send():
                raise PermanentError(f"the mailer accepted no message for {ctx.email!r}")
        except Exception as exc:
            error = str(exc) if isinstance(exc, PermanentError) else f"{type(exc).__name__}: {exc}"
            if is_transient_send(exc):
                db.run(
                    briefs.update_brief,
                    ctx.brief_id,
                    {"email_claimed_at": None, "error": f"email: {error}"},
                )
                raise TransientError(error) from exc
            failed = {"status": DailyBrief.Status.EMAIL_FAILED, "error": f"email: {error}"[:2000]}
            db.run(briefs.update_brief, ctx.brief_id, failed)
            raise PermanentError(error) from exc
        # The brief is marked sent with the item's result (`record`): in one statement for
        # the runner's results, and the slot is free for the next brief meanwhile.
        return Outcome(
            "succeeded",
            f"{who}; emailed to {ctx.email}",
            tallies | {"emailed": 1},
            record=(ctx.brief_id, timezone.now()),
        )
