"""Customer organizations, their Medicare contacts, and the outreach emails scheduled for them."""

from __future__ import annotations

from datetime import date, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from scheduler_app import rules


class Organization(models.Model):
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            # Imports and the command line name organizations; a name means one account.
            models.UniqueConstraint(fields=["name"], name="organization_name_uniq"),
        ]

    def __str__(self) -> str:
        return self.name


class ContactQuerySet(models.QuerySet):
    def search(self, text: str) -> ContactQuerySet:
        text = text.strip()
        if not text:
            return self
        return self.filter(
            Q(first_name__icontains=text) | Q(last_name__icontains=text) | Q(email__icontains=text)
        )


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
