"""Support-inbox conversations, their messages, and the shipments found in them."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from scheduler_app.importer import spreadsheet_safe


class ConversationQuerySet(models.QuerySet):
    def needing_scan(self) -> ConversationQuerySet:
        """Never scanned, or with a message newer than the last scan."""
        return self.filter(Q(scanned_at__isnull=True) | Q(last_message_at__gt=F("scanned_through")))

    def search(self, text: str) -> ConversationQuerySet:
        text = text.strip()
        if not text:
            return self
        return self.filter(
            Q(subject__icontains=text)
            | Q(external_id__icontains=text)
            | Q(shipments__tracking_number__icontains=text.replace(" ", "").upper())
        ).distinct()


class Conversation(models.Model):
    class Source(models.TextChoices):
        FRONT = "front", "Front"
        MAILBOX = "mailbox", "Mailbox"

    class ScanState(models.TextChoices):
        NEW = "new", "Not scanned"
        SCANNED = "scanned", "Scanned"
        ERROR = "error", "Extraction failed"

    source = models.CharField(max_length=10, choices=Source.choices)
    # The source's own id: Front's `cnv_...`, or the thread's root Message-ID.
    external_id = models.CharField(max_length=255)
    subject = models.CharField(max_length=300, blank=True)
    participants = models.JSONField(default=list, blank=True)  # addresses
    last_message_at = models.DateTimeField(null=True, blank=True)
    scan_state = models.CharField(max_length=10, choices=ScanState.choices, default=ScanState.NEW)
    # When the last successful extraction ran; an extraction error leaves it as it was, so
    # the conversation is scanned again (`needing_scan`).
    scanned_at = models.DateTimeField(null=True, blank=True)
    # The newest message time that scan read: a later message makes it due again.
    scanned_through = models.DateTimeField(null=True, blank=True)
    scan_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-last_message_at", "-id"]
        constraints = [
            # A source's conversation is stored once; scans upsert on it.
            models.UniqueConstraint(
                fields=["source", "external_id"], name="conversation_source_external_uniq"
            ),
        ]
        indexes = [
            # The conversations page's newest-first list, filtered by scan state.
            models.Index(
                fields=["scan_state", "-last_message_at"], name="conversation_state_recent_idx"
            ),
        ]

    def __str__(self) -> str:
        return self.subject or self.external_id

    def get_absolute_url(self) -> str:
        return reverse("scanner:conversation", args=[self.pk])

    def needs_scan(self) -> bool:
        if self.scanned_at is None:
            return True
        if self.last_message_at is None or self.scanned_through is None:
            return False
        return self.last_message_at > self.scanned_through


class MailboxUpload(models.Model):
    """An .mbox or a .zip of .eml files uploaded on the dashboard (source `upload:<id>`).

    Kept in the database so a worker on any machine can read it.
    """

    name = models.CharField(max_length=255)
    data = models.BinaryField()
    size = models.PositiveIntegerField(default=0)
    uploaded_by = models.ForeignKey(
        "auth.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name


class Message(models.Model):
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    external_id = models.CharField(max_length=255)  # Front's `msg_...`, or the Message-ID
    sender_name = models.CharField(max_length=200, blank=True)
    sender_address = models.CharField(max_length=254, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    subject = models.CharField(max_length=300, blank=True)
    body = models.TextField(blank=True)  # plain text

    class Meta:
        ordering = ["sent_at", "id"]
        constraints = [
            # Re-reading a source updates a message instead of adding it again; also the
            # conversation page's list of messages.
            models.UniqueConstraint(
                fields=["conversation", "external_id"], name="message_conversation_external_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.sender_address}: {self.subject}"


class Shipment(models.Model):
    class Carrier(models.TextChoices):
        UPS = "ups", "UPS"
        USPS = "usps", "USPS"
        FEDEX = "fedex", "FedEx"
        DHL = "dhl", "DHL"
        OTHER = "other", "Other"

    tracking_number = models.CharField(max_length=40)  # upper case, no spaces or dashes
    carrier = models.CharField(max_length=10, choices=Carrier.choices)
    po_number = models.CharField(max_length=60, blank=True)
    supplier = models.CharField(max_length=200, blank=True)
    shipped_date = models.DateField(null=True, blank=True)
    confidence = models.FloatField(default=1.0)
    checksum_valid = models.BooleanField(default=False)
    # The conversation it was first found in, and by which job.
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="shipments"
    )
    job = models.ForeignKey(
        "project.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    first_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-first_seen", "-id"]
        constraints = [
            # A tracking number is one shipment however many conversations mention it.
            models.UniqueConstraint(fields=["tracking_number"], name="shipment_tracking_uniq"),
        ]
        indexes = [
            # The shipments page (newest first) and the daily brief's "last 24 h".
            models.Index(fields=["-first_seen"], name="shipment_first_seen_idx"),
            # `export_shipments --job`.
            models.Index(fields=["job"], name="shipment_job_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_carrier_display()} {self.tracking_number}"

    def as_row(self) -> dict:
        """The export's row: `export_shipments` and the shipments page's CSV download."""
        return {
            "tracking_number": self.tracking_number,
            "carrier": self.carrier,
            "po_number": self.po_number,
            "supplier": self.supplier,
            "shipped_date": self.shipped_date.isoformat() if self.shipped_date else "",
            "confidence": round(self.confidence, 3),
            "checksum_valid": self.checksum_valid,
            "conversation": self.conversation.external_id,
        }


EXPORT_FIELDS = [
    "tracking_number",
    "carrier",
    "po_number",
    "supplier",
    "shipped_date",
    "confidence",
    "checksum_valid",
    "conversation",
]


def csv_row(row: dict) -> dict:
    """An export row for CSV: booleans as true/false, text a spreadsheet would run as a
    formula quoted (supplier names and PO numbers come from emails)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, str):
            value = spreadsheet_safe(value)
        out[key] = value
    return out


class ExtractionResult(models.Model):
    """One extraction of one conversation in one job: what was asked, answered and kept."""

    class Extractor(models.TextChoices):
        RULES = "rules", "Rules"
        OPENAI = "openai", "OpenAI"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="extractions", db_index=False
    )
    job = models.ForeignKey(
        "project.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    extractor = models.CharField(max_length=10, choices=Extractor.choices)
    model = models.CharField(max_length=100, blank=True)
    # The structured output, validated against the schema (never stored otherwise).
    output = models.JSONField(null=True, blank=True)
    # Tracking numbers the model named that the checks threw out, with why.
    rejected = models.JSONField(default=list, blank=True)
    # The LLM was not asked: the rules found no tracking-like text in the conversation.
    llm_skipped = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    shipments = models.ManyToManyField(Shipment, related_name="extractions", blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One extraction per conversation and job: a re-run item reuses it.
            models.UniqueConstraint(
                fields=["conversation", "job"], name="extraction_conversation_job_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.extractor} on {self.conversation_id}"
