"""Topic recipients across organizations, and the invite or announcement sent to them.

Callers: the `gather_recipients` job kind (scheduler_app/jobs.py), the recipients pages and
the `export_recipients` command.

Gathering and sending are two phases of one job:
1. The job's first items are organizations. Each resolves that organization's recipients
   for the topic (`resolve`) and stores them as its RecipientGroup.
2. In a send, the same item also records a Delivery per address of its group (unique per
   mailing and address in lower case) and adds one item per delivery to the job
   (`queue_deliveries`), in one transaction, before the organization's item settles: the
   job cannot finish before every send has run.
3. Each delivery item claims its delivery with a conditional UPDATE before sending, as
   send_due_emails claims each email, so an address gets a mailing once however many
   organizations list it and however often the mailing is run.
The job's recipients are its groups merged (`merge`): addresses compared trimmed and in
lower case, the first organization's spelling kept, sorted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import icalendar
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Count
from django.template.loader import render_to_string

from project import engine
from project.mail import EmailMessage
from project.models import Job, JobItem
from scheduler_app.models import Contact, Delivery, Mailing, Organization, RecipientGroup, Topic

KIND = "gather_recipients"
# Item keys: an organization's item, and a delivery's (its data says which it is).
ORGANIZATION_KEY = "org:"
DELIVERY_KEY = "to:"
# The namespace of invite UIDs: the same (topic, title, start) always gets the same UID.
UID_NAMESPACE = uuid.UUID("5b0f2d47-6a51-4c47-9f0e-3f1c8e0d2a61")


def address_key(address: str) -> str:
    """How addresses are compared: trimmed, in lower case."""
    return address.strip().lower()


def is_valid_address(address: str) -> bool:
    try:
        validate_email(address)
    except ValidationError:
        return False
    return True


def organization_names(text: str) -> list[str]:
    """The names of a comma-separated list, trimmed, each once, in their order."""
    return list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))


def organization_items(names: Iterable[str]) -> list[tuple[str, dict]]:
    """The organization items of a job, in order (the order decides the kept spelling)."""
    # Keys are at most 200 characters; the data holds the whole name.
    return [
        ((ORGANIZATION_KEY + name)[:200], {"organization": name, "position": position})
        for position, name in enumerate(names)
    ]


@dataclass
class Resolved:
    """One organization's recipients for a topic, and what was dropped."""

    addresses: list[str]
    contacts: int = 0
    invalid: int = 0
    not_allowed: int = 0


def resolve(organization: Organization, topic: Topic) -> Resolved:
    """The organization's recipients for the topic: valid, allowed, each address once.

    Contacts come in id order; an address a contact repeats (in any case) is kept as the
    first one spelled it.
    """
    emails = (
        Contact.objects.filter(organization=organization)
        .receiving(topic)
        .order_by("id")
        .values_list("email", flat=True)
    )
    allowed = organization.allow_list()
    resolved = Resolved([])
    seen = set()
    for email in emails.iterator(chunk_size=5000):
        resolved.contacts += 1
        address = email.strip()
        if not is_valid_address(address):
            resolved.invalid += 1
            continue
        key = address.lower()
        if allowed is not None and key not in allowed:
            resolved.not_allowed += 1
        elif key not in seen:
            seen.add(key)
            resolved.addresses.append(address)
    return resolved


@dataclass(frozen=True)
class Recipient:
    address: str
    organization: str  # the first organization that gave it


def merge(job: Job) -> list[Recipient]:
    """The job's recipients: its groups' addresses each once, first spelling kept, sorted."""
    groups = (
        RecipientGroup.objects.filter(job=job)
        .order_by("position")
        .values_list("organization__name", "addresses")
    )
    first: dict[str, Recipient] = {}
    for name, addresses in groups:
        for address in addresses:
            key = address.lower()
            if key not in first:
                first[key] = Recipient(address, name)
    return [first[key] for key in sorted(first)]


def summary_line(job: Job) -> str | None:
    """`📊 Aggregation complete: ...` of a job with organization items; None without any."""
    counts = dict(
        JobItem.objects.filter(job=job, key__startswith=ORGANIZATION_KEY)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    organizations = sum(counts.values())
    if not organizations:
        return None  # a retry of failed sends only
    unique = len(merge(job))
    succeeded = counts.get(JobItem.Status.SUCCEEDED, 0)
    failed = counts.get(JobItem.Status.FAILED, 0)
    return (
        f"📊 Aggregation complete: {unique:,} unique recipients from {organizations:,} "
        f"organizations ({succeeded:,} successful, {failed:,} errors)"
    )


@dataclass
class OrganizationRow:
    """One organization of a job as the recipients page shows it."""

    name: str
    status: str
    error: str
    group: RecipientGroup | None


def organization_rows(job: Job) -> list[OrganizationRow]:
    items = JobItem.objects.filter(job=job, key__startswith=ORGANIZATION_KEY).order_by("id")
    groups = {
        group.organization.name: group
        for group in RecipientGroup.objects.filter(job=job)
        .select_related("organization")
        .defer("addresses")
    }
    rows = []
    for item in items.only("key", "data", "status", "error_message"):
        name = (item.data or {}).get("organization", item.key.removeprefix(ORGANIZATION_KEY))
        rows.append(OrganizationRow(name, item.status, item.error_message, groups.get(name)))
    return rows


# -- Sending ---------------------------------------------------------------------------------


def starts_at(params: dict) -> datetime | None:
    text = params.get("starts_at")
    return datetime.fromisoformat(text) if text else None


def invite_uid(topic: str, title: str, start: datetime | None) -> str:
    """The UID of an invite's calendar event: the same for the same (topic, title, start)."""
    when = start.astimezone(UTC).isoformat() if start else ""
    name = "\n".join([topic, title, when])
    return f"{uuid.uuid5(UID_NAMESPACE, name)}@batchboard"


def mailing_for(params: dict, topic: Topic) -> Mailing:
    """The job's mailing, made by the first organization item that needs it."""
    start = starts_at(params)
    mailing, _ = Mailing.objects.get_or_create(
        topic=topic,
        title=params["title"],
        starts_at=start,
        defaults={
            "kind": params.get("kind", Mailing.Kind.INVITE),
            "duration_minutes": params.get("duration_minutes"),
            "organizer": params.get("organizer", ""),
            "uid": invite_uid(topic.name, params["title"], start),
        },
    )
    return mailing


def queue_deliveries(job: Job, mailing: Mailing, addresses: list[str]) -> int:
    """Record a delivery per address and add an item per delivery to the job; return how many.

    Called by an organization's item while it runs, so the job is not finished. The job row
    is locked first: a cancel either comes before (and nothing is added) or waits and then
    cancels the new items. Addresses another organization or an earlier run recorded keep
    their delivery; their items find them sent, or send them if they never went.
    """
    by_key = {address_key(address): address for address in reversed(addresses)}
    with transaction.atomic():
        locked = Job.objects.select_for_update(no_key=True).get(pk=job.pk)
        if locked.cancel_requested_at or locked.error or locked.finished_at:
            return 0
        # Inserted in key order, so two organizations listing the same addresses wait for
        # each other instead of deadlocking.
        Delivery.objects.bulk_create(
            [
                Delivery(mailing=mailing, address=by_key[key], address_key=key)
                for key in sorted(by_key)
            ],
            ignore_conflicts=True,
            batch_size=5000,
        )
        ids = sorted(
            Delivery.objects.filter(mailing=mailing, address_key__in=list(by_key)).values_list(
                "id", flat=True
            )
        )
        engine.add_items(job, [(f"{DELIVERY_KEY}{pk}", {"delivery": pk}) for pk in ids])
    return len(ids)


def invite_ics(mailing: Mailing, address: str) -> bytes:
    """The invite as an iCalendar REQUEST for one attendee (RFC 5546).

    Reference: https://icalendar.readthedocs.io/en/latest/usage.html
    """
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//Batchboard//Topic invites//EN")
    calendar.add("version", "2.0")
    calendar.add("method", "REQUEST")
    event = icalendar.Event()
    start = mailing.starts_at.astimezone(UTC)
    event.add("uid", mailing.uid)
    event.add("dtstamp", mailing.created_at.astimezone(UTC))
    event.add("dtstart", start)
    event.add("dtend", start + timedelta(minutes=mailing.duration_minutes or 60))
    event.add("summary", mailing.title)
    event.add("sequence", 0)
    event.add("status", "CONFIRMED")
    organizer = icalendar.vCalAddress(f"mailto:{mailing.organizer}")
    event.add("organizer", organizer)
    attendee = icalendar.vCalAddress(f"mailto:{address}")
    attendee.params["ROLE"] = icalendar.vText("REQ-PARTICIPANT")
    attendee.params["PARTSTAT"] = icalendar.vText("NEEDS-ACTION")
    attendee.params["RSVP"] = icalendar.vText("TRUE")
    event.add("attendee", attendee)
    calendar.add_component(event)
    return calendar.to_ical()


def mailing_email(mailing: Mailing, address: str) -> EmailMessage:
    """The email of a mailing to one address; an invite carries its invite.ics."""
    text = render_to_string(f"scheduler_app/emails/topic_{mailing.kind}.txt", {"mailing": mailing})
    body = text.strip() + "\n"
    reply_to = [mailing.organizer] if mailing.organizer else []
    # Reference: https://docs.djangoproject.com/en/6.1/topics/email/#emailmessage-objects
    message = EmailMessage(
        " ".join(mailing.title.split()),
        body,
        settings.DEFAULT_FROM_EMAIL,
        [address],
        reply_to=reply_to,
    )
    if mailing.kind == Mailing.Kind.INVITE:
        message.attach("invite.ics", invite_ics(mailing, address), "text/calendar")
    return message
