"""Customer organizations, their Medicare contacts, and the outreach emails scheduled for them."""

from __future__ import annotations

import re
from datetime import date, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import OuterRef, Q, Subquery
from django.urls import reverse
from django.utils import timezone

from scheduler_app import rules


class OrganizationQuerySet(models.QuerySet):
    def active(self) -> OrganizationQuerySet:
        return self.filter(archived=False)


class Organization(models.Model):
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)
    # Topic recipients (gather_recipients): an archived organization fails its item, and a
    # test organization may limit its recipients to a list of addresses.
    archived = models.BooleanField(
        default=False, help_text="Archived: left out of gathering topic recipients."
    )
    allowed_recipients = models.TextField(
        blank=True,
        help_text=(
            "For a test organization: when set, only these addresses (one per line) receive "
            "topic emails."
        ),
    )

    # Staff users who run the account; each one's brief has a section for it (briefs.py).
    owners = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="owned_organizations"
    )

    objects = OrganizationQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            # Imports and the command line name organizations; a name means one account.
            models.UniqueConstraint(fields=["name"], name="organization_name_uniq"),
        ]

    def __str__(self) -> str:
        return self.name

    def allow_list(self) -> set[str] | None:
        """The allowed recipients, trimmed and in lower case; None when every one is allowed."""
        addresses = {a.lower() for a in re.split(r"[\s,;]+", self.allowed_recipients) if a}
        return addresses or None


class ContactQuerySet(models.QuerySet):
    def search(self, text: str) -> ContactQuerySet:
        text = text.strip()
        if not text:
            return self
        return self.filter(
            Q(first_name__icontains=text) | Q(last_name__icontains=text) | Q(email__icontains=text)
        )

    def receiving(self, topic: Topic) -> ContactQuerySet:
        """The contacts who receive a topic (the one definition of the subscription rule).

        A contact receives topic T when it has not unsubscribed from T nor from every topic,
        and either subscribed to T (or to every topic) or T is opt-out. An unsubscribe wins.
        """
        chosen = Subscription.objects.filter(
            Q(topic=topic) | Q(topic__isnull=True), contact=OuterRef("pk")
        )

        def first(status: str) -> Subquery:
            # A scalar subquery, not EXISTS: PostgreSQL never turns it into a join, so each
            # contact is one probe of subscription_uniq. Without statistics (subscriptions
            # just imported) an EXISTS became a join over every subscription to the topic,
            # 0.3 s for each organization of 2,000 contacts instead of 10 ms.
            return Subquery(chosen.filter(status=status).order_by().values("pk")[:1])

        contacts = self.alias(unsubscribed=first(Subscription.Status.UNSUBSCRIBED))
        contacts = contacts.filter(unsubscribed__isnull=True)
        if topic.mode == Topic.Mode.OPT_IN:
            contacts = contacts.alias(subscribed=first(Subscription.Status.SUBSCRIBED))
            contacts = contacts.filter(subscribed__isnull=False)
        return contacts


class Contact(models.Model):
    # No index of its own: contact_org_external_uniq and contact_org_state_idx lead with it.
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="contacts", db_index=False
    )
    external_id = models.CharField(max_length=64, help_text="The `id` column of the import.")
    first_name = models.CharField(max_length=100, blank=True)
    last_name = models.CharField(max_length=100, blank=True)
    email = models.CharField(max_length=254, blank=True)
    phone = models.CharField(max_length=40, blank=True)
    state = models.CharField(max_length=2, blank=True)
    zip_code = models.CharField(max_length=10, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    effective_date = models.DateField(null=True, blank=True)
    carrier = models.CharField(max_length=100, blank=True)
    plan_type = models.CharField(max_length=50, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ContactQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            # The import upserts by (organization, id column).
            models.UniqueConstraint(
                fields=["organization", "external_id"], name="contact_org_external_uniq"
            ),
        ]
        indexes = [
            # Contacts list filtered by organization and state; schedule runs per organization.
            models.Index(fields=["organization", "state"], name="contact_org_state_idx"),
            # Contacts list filtered by state alone.
            models.Index(fields=["state"], name="contact_state_idx"),
        ]

    def __str__(self) -> str:
        name = f"{self.first_name} {self.last_name}".strip()
        return name or f"contact {self.external_id}"

    def get_absolute_url(self) -> str:
        return reverse("contact", args=[self.pk])

    def rule_data(self, today: date) -> rules.ContactData:
        """The contact as the rule engine sees it; raises rules.RuleError for bad data."""
        return rules.parse_contact(self.state, self.birth_date, self.effective_date, today)

    def receives(self, topic: Topic) -> bool:
        """Whether the contact receives the topic (ContactQuerySet.receiving says when)."""
        return Contact.objects.filter(pk=self.pk).receiving(topic).exists()


class ScheduledEmailQuerySet(models.QuerySet):
    def pending(self) -> ScheduledEmailQuerySet:
        return self.filter(status=ScheduledEmail.Status.PENDING)

    def due(self, on_or_before: date) -> ScheduledEmailQuerySet:
        """Pending emails to send by a day: unclaimed, or claimed by a sender that died."""
        abandoned = timezone.now() - timedelta(seconds=settings.BATCH_LEASE_SECONDS)
        return self.pending().filter(
            Q(claimed_at__isnull=True) | Q(claimed_at__lt=abandoned), send_date__lte=on_or_before
        )


class ScheduledEmail(models.Model):
    class Type(models.TextChoices):
        BIRTHDAY = "birthday"
        EFFECTIVE_DATE = "effective_date", "effective date"
        AEP = "aep", "AEP"
        POST_WINDOW = "post_window", "post-window"

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"
        SKIPPED = "skipped"
        CANCELLED = "cancelled"

    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="emails")
    type = models.CharField(max_length=20, choices=Type)
    send_date = models.DateField()
    status = models.CharField(max_length=10, choices=Status, default=Status.PENDING)
    reason = models.CharField(max_length=300, blank=True)
    job = models.ForeignKey(
        "project.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="emails"
    )
    # Set by the send job's conditional UPDATE before sending, so no email goes out twice.
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ScheduledEmailQuerySet.as_manager()

    class Meta:
        ordering = ["send_date", "type"]
        constraints = [
            # Rescheduling never duplicates an email, and a sent one is never scheduled again.
            models.UniqueConstraint(
                fields=["contact", "type", "send_date"], name="scheduledemail_uniq"
            ),
        ]
        indexes = [
            # Work waiting to be done: send_due_emails' "pending and due on or before" query.
            models.Index(
                fields=["send_date"],
                name="scheduledemail_due_idx",
                condition=Q(status="pending"),
            ),
            # The schedule overview: emails per week by type.
            models.Index(fields=["send_date", "type"], name="scheduledemail_date_type_idx"),
            # Daily briefs: emails sent or failed yesterday, by when they were claimed.
            models.Index(
                fields=["claimed_at"],
                name="scheduledemail_claimed_idx",
                condition=Q(claimed_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_type_display()} to {self.contact} on {self.send_date}"


class ContactImport(models.Model):
    """One CSV import and its report of bad rows (downloadable as CSV)."""

    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL)
    filename = models.CharField(max_length=255, blank=True)
    organization = models.CharField(max_length=200, blank=True)
    rows = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    errors_csv = models.TextField(blank=True, help_text="row,field,value,reason")
    # An upload from the dashboard is imported by a job, one ContactImportPart per item;
    # the counts and errors_csv above then grow as its parts are imported.
    job = models.ForeignKey(
        "project.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    header = models.TextField(blank=True, help_text="The file's header line, for its parts.")
    organization_option = models.CharField(
        max_length=200, blank=True, help_text="The organization of every row; empty: the file's."
    )
    may_update = models.BooleanField(
        default=True, help_text="Whether rows may update existing contacts (change_contact)."
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"import of {self.filename or 'CSV'} ({self.created_at:%Y-%m-%d %H:%M})"

    def get_absolute_url(self) -> str:
        return reverse("contact_import", args=[self.pk])


class ContactImportPart(models.Model):
    """A run of consecutive rows of an uploaded file: one item of the import's job.

    Stored in the database, not on a disk, so a worker on any machine can import it. `data`
    is emptied once the part is imported; a part that failed keeps it for a retry.
    """

    contact_import = models.ForeignKey(
        ContactImport, on_delete=models.CASCADE, related_name="parts"
    )
    number = models.PositiveIntegerField()
    first_line = models.PositiveIntegerField(help_text="Line of the file where its rows start.")
    data = models.BinaryField(help_text="The rows as uploaded (UTF-8), without the header.")
    imported = models.BooleanField(default=False)
    rows = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    errors_listed = models.PositiveIntegerField(default=0)
    errors_unlisted = models.PositiveIntegerField(default=0)
    error_lines = models.TextField(blank=True, help_text="Its errors as CSV, without a header.")
    organizations = models.JSONField(default=list, help_text="Organizations its rows went to.")

    class Meta:
        ordering = ["contact_import", "number"]
        constraints = [
            # The job's item keys are part numbers; the import page reads the parts in order.
            models.UniqueConstraint(
                fields=["contact_import", "number"], name="contactimportpart_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"part {self.number} of import {self.contact_import_id}"


# -- Topics ----------------------------------------------------------------------------------


class Topic(models.Model):
    """What topic emails are about: contacts opt into an opt-in topic, out of an opt-out one."""

    class Mode(models.TextChoices):
        OPT_IN = "opt_in", "opt-in"
        OPT_OUT = "opt_out", "opt-out"

    # The import's `topics` and `unsubscribed` columns list names separated by `;`, and `*`
    # means every topic, so a name is one plain word.
    name = models.CharField(
        max_length=50,
        validators=[
            RegexValidator(
                r"^[a-z0-9][a-z0-9_-]*\Z",
                "Lower-case letters, digits, - and _, starting with a letter or digit.",
            )
        ],
        help_text="As imports and jobs name it, e.g. calendar.",
    )
    mode = models.CharField(
        max_length=10,
        choices=Mode,
        default=Mode.OPT_IN,
        help_text=(
            "Opt-in: only contacts who subscribed receive it. Opt-out: every contact except "
            "those who unsubscribed."
        ),
    )
    description = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            # Imports and gather_recipients name topics; a name means one topic.
            models.UniqueConstraint(fields=["name"], name="topic_name_uniq"),
        ]

    def __str__(self) -> str:
        return self.name


class Subscription(models.Model):
    """A contact's choice about one topic, or about every topic (no topic: `*` in imports)."""

    class Status(models.TextChoices):
        SUBSCRIBED = "subscribed"
        UNSUBSCRIBED = "unsubscribed"

    # No index of its own: both constraints lead with it.
    contact = models.ForeignKey(
        Contact, on_delete=models.CASCADE, related_name="subscriptions", db_index=False
    )
    topic = models.ForeignKey(
        Topic,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="subscriptions",
        help_text="Empty: every topic.",
    )
    status = models.CharField(max_length=12, choices=Status)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["contact", "topic", "status"]
        constraints = [
            # One row per choice; ContactQuerySet.receiving() probes it by contact.
            models.UniqueConstraint(
                fields=["contact", "topic", "status"], name="subscription_uniq"
            ),
            # The same for "every topic", whose topic is NULL (NULLs are distinct above).
            models.UniqueConstraint(
                fields=["contact", "status"],
                condition=Q(topic__isnull=True),
                name="subscription_every_topic_uniq",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.contact} {self.status} {self.topic or '*'}"


class RecipientGroup(models.Model):
    """What one organization gave a gather_recipients job: its recipients for the topic.

    `addresses` are the organization's valid, allowed addresses, trimmed, each once
    (compared in lower case), in contact order. A job's recipients are its groups merged
    (scheduler_app.recipients.merge).
    """

    job = models.ForeignKey(
        "project.Job", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveIntegerField(
        help_text="Its place among the job's organizations: the first spelling of an address wins."
    )
    addresses = models.JSONField(default=list)
    contacts = models.PositiveIntegerField(default=0, help_text="Contacts receiving the topic.")
    invalid = models.PositiveIntegerField(default=0, help_text="Invalid addresses dropped.")
    not_allowed = models.PositiveIntegerField(
        default=0, help_text="Addresses dropped for not being on the allow-list."
    )

    class Meta:
        ordering = ["job", "position"]
        constraints = [
            # An item that runs again replaces its group; the merge reads a job's groups.
            models.UniqueConstraint(fields=["job", "organization"], name="recipientgroup_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.organization} in job {self.job_id}"


class Mailing(models.Model):
    """An invite or announcement to a topic's recipients.

    Identified by (topic, title, starts_at): running the same one again finds it, and its
    deliveries keep any address from getting it twice.
    """

    class Kind(models.TextChoices):
        INVITE = "invite"
        ANNOUNCEMENT = "announcement"

    topic = models.ForeignKey(Topic, on_delete=models.PROTECT, related_name="mailings")
    kind = models.CharField(max_length=12, choices=Kind, default=Kind.INVITE)
    title = models.CharField(max_length=200)
    starts_at = models.DateTimeField(null=True, blank=True)
    duration_minutes = models.PositiveIntegerField(null=True, blank=True)
    organizer = models.CharField(max_length=254, blank=True)
    uid = models.CharField(max_length=100, help_text="The UID of the invite's calendar event.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # An invite is (topic, title, starts_at): gather_recipients finds it again.
            models.UniqueConstraint(
                fields=["topic", "title", "starts_at"], name="mailing_identity_uniq"
            ),
            # The same for announcements without a start (NULLs are distinct above).
            models.UniqueConstraint(
                fields=["topic", "title"],
                condition=Q(starts_at__isnull=True),
                name="mailing_identity_nostart_uniq",
            ),
        ]

    def __str__(self) -> str:
        when = f" at {self.starts_at:%Y-%m-%d %H:%M %Z}" if self.starts_at else ""
        return f"{self.get_kind_display()} {self.title!r} ({self.topic}){when}"


class DeliveryQuerySet(models.QuerySet):
    def claimable(self) -> DeliveryQuerySet:
        """Deliveries to send: not sent, and unclaimed or claimed by a sender that died."""
        abandoned = timezone.now() - timedelta(seconds=settings.BATCH_LEASE_SECONDS)
        return self.exclude(status=Delivery.Status.SENT).filter(
            Q(claimed_at__isnull=True) | Q(claimed_at__lt=abandoned)
        )


class Delivery(models.Model):
    """One recipient of a mailing: claimed before its email is sent, so none goes twice."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"

    # No index of its own: delivery_address_uniq leads with it.
    mailing = models.ForeignKey(
        Mailing, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    address = models.CharField(max_length=254, help_text="As the first organization spelled it.")
    address_key = models.CharField(max_length=254, help_text="Trimmed, in lower case.")
    status = models.CharField(max_length=10, choices=Status, default=Status.PENDING)
    # The job that last tried it: the recipients page counts a job's sends with it.
    job = models.ForeignKey(
        "project.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["mailing", "address_key"]
        verbose_name_plural = "deliveries"
        constraints = [
            # One email per address and mailing, whatever the spelling and however many runs.
            models.UniqueConstraint(
                fields=["mailing", "address_key"], name="delivery_address_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.address} ({self.status})"


# -- Daily briefs ----------------------------------------------------------------------------


def check_timezone(name: str) -> None:
    """Raise ValidationError unless `name` is an IANA time zone zoneinfo knows."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{name!r} is not an IANA time zone (e.g. America/Chicago)") from None


class BriefPreference(models.Model):
    """When and how a user gets a brief; `manage.py schedule_briefs` reads it every hour."""

    class Frequency(models.TextChoices):
        DAILY = "daily"
        WEEKLY = "weekly"

    class Weekday(models.IntegerChoices):
        MONDAY = 0
        TUESDAY = 1
        WEDNESDAY = 2
        THURSDAY = 3
        FRIDAY = 4
        SATURDAY = 5
        SUNDAY = 6

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="brief_preference"
    )
    timezone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[check_timezone],
        help_text="IANA time zone name, e.g. America/Chicago.",
    )
    time_of_day = models.TimeField(default=time(7, 0), help_text="Wall time in that zone.")
    frequency = models.CharField(max_length=10, choices=Frequency, default=Frequency.DAILY)
    day_of_week = models.PositiveSmallIntegerField(
        choices=Weekday, default=Weekday.MONDAY, help_text="The day of a weekly brief."
    )
    active = models.BooleanField(default=True, help_text="Off: no briefs at all.")
    email_enabled = models.BooleanField(default=True, help_text="Also email each brief.")

    class Meta:
        ordering = ["user_id"]

    def __str__(self) -> str:
        return f"brief preference of {self.user}"


class DailyBrief(models.Model):
    """One user's brief for one day: a section per owned organization and a summary.

    Created `pending` by the scheduler (or a launch) together with its job item; the item
    builds it (`ready`) and emails it when the user wants email (`sent`).
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        READY = "ready"
        SENT = "sent"
        EMAIL_FAILED = "email_failed", "email failed"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="daily_briefs"
    )
    brief_date = models.DateField(help_text="The day of the brief in the user's time zone.")
    status = models.CharField(max_length=12, choices=Status, default=Status.PENDING)
    sections = models.JSONField(default=list, blank=True)
    summary = models.TextField(blank=True)
    summary_source = models.CharField(
        max_length=10, blank=True, help_text="llm, or template when no model wrote it."
    )
    is_reengagement = models.BooleanField(default=False)
    reason = models.CharField(max_length=40, blank=True, help_text="Why it was sent.")
    job = models.ForeignKey(
        "project.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    built_at = models.DateTimeField(null=True, blank=True)
    # Set by a conditional UPDATE before the email goes, so it never goes twice.
    email_claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="Why the summary or the email fell short.")

    class Meta:
        ordering = ["-brief_date", "-id"]
        constraints = [
            # One brief per user and day: a second scheduler racing the first inserts
            # ON CONFLICT DO NOTHING and queues only the briefs it created. Its index also
            # serves a user's brief list and the scheduler's last-brief date per user.
            models.UniqueConstraint(
                fields=["user", "brief_date"], name="dailybrief_user_date_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"brief for {self.user} on {self.brief_date}"

    def get_absolute_url(self) -> str:
        return reverse("brief", args=[self.pk])

    @property
    def failed_sections(self) -> int:
        return sum(1 for section in self.sections if section.get("error"))
