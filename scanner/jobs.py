"""The `scan_conversations` job kind: find shipment tracking numbers in a support inbox.

Items are conversations. The planner pages through the source (Front's conversation
search, or a mailbox read as a stream of threads), stores each page's conversations, and
adds them as items, so extraction starts while paging goes on. Each item:

1. loads its conversation (from Front: fetches its messages, every page of them);
2. skips it when nothing is new since its last scan (unless the job rescans);
3. reuses this job's extraction of it if a worker died after making one, so the model
   never sees a conversation twice in one job;
4. extracts (rules or OpenAI), records the extraction, adds new shipments and links
   known ones, and marks the conversation scanned, all in one transaction.

A failed extraction records its error on the conversation and leaves it unscanned, and the
engine records it on the item (after retries, for transient errors).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from django import forms
from django.conf import settings
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from project import llm
from project.kinds import Item, JobKind, Outcome, Page, PermanentError, register
from project.models import Job
from scanner import extract, front, mailbox
from scanner.models import Conversation, ExtractionResult, MailboxUpload, Message, Shipment

FIRST_PAGE = 20  # a small first page, so extraction starts at once (or the concurrency)
PAGE = 100  # conversations per planner page (Front's largest page)


def resolve_mailbox(path: str) -> Path:
    """A mailbox path: absolute, or relative to SCANNER_MAILBOX_DIR."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = Path(settings.SCANNER_MAILBOX_DIR) / candidate
    return candidate


class ScanForm(forms.Form):
    source = forms.CharField(
        initial="mailbox:demo.mbox",
        max_length=500,
        help_text=(
            "front (the inbox FRONT_INBOX_ID), or mailbox:PATH to an .mbox file, a folder of "
            ".eml files or a .zip of them on the workers (relative to SCANNER_MAILBOX_DIR). "
            "(The admin's rescan uses `selection`; uploads are `upload:ID`.)"
        ),
    )
    after = forms.DateField(
        required=False, help_text="Only conversations with messages after this date."
    )
    max_pages = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=100_000,
        help_text=f"Stop after this many pages of {PAGE} conversations. Empty: all.",
    )
    extractor = forms.ChoiceField(
        choices=[
            ("auto", "auto (OpenAI when OPENAI_API_KEY is set, else rules)"),
            ("openai", "OpenAI"),
            ("rules", "rules (check digits)"),
        ],
        initial="auto",
        required=False,
    )
    rescan = forms.BooleanField(
        required=False, help_text="Scan conversations again even when nothing is new."
    )

    def clean_source(self) -> str:
        source = self.cleaned_data["source"].strip()
        if source == "selection":  # the admin's "Rescan selected conversations"
            return source
        if source == "front":
            if not settings.FRONT_API_TOKEN or not settings.FRONT_INBOX_ID:
                raise forms.ValidationError(
                    "the Front source needs FRONT_API_TOKEN and FRONT_INBOX_ID in the environment"
                )
            return source
        kind, _, rest = source.partition(":")
        if kind == "upload" and rest.isdigit():
            if not MailboxUpload.objects.filter(pk=int(rest)).exists():
                raise forms.ValidationError(f"there is no uploaded mailbox #{rest}")
            return source
        if kind != "mailbox" or not rest.strip():
            raise forms.ValidationError("use front, or mailbox:PATH (an .mbox, .zip or folder)")
        return f"mailbox:{rest.strip()}"

    def clean_extractor(self) -> str:
        name = self.cleaned_data["extractor"] or "auto"
        if name == "openai" and not llm.enabled():
            raise forms.ValidationError("the OpenAI extractor needs OPENAI_API_KEY")
        return name


@register
class ScanConversationsKind(JobKind):
    name = "scan_conversations"
    label = "Scan inbox for shipments"
    description = (
        "Find shipment tracking numbers in support-inbox conversations (Front or a mailbox)."
    )
    form_class = ScanForm
    limiter = "openai"
    view_permission = "scanner.view_conversation"

    # -- planning --------------------------------------------------------------------------

    def plan(self, job: Job, cursor: str) -> Iterator[Page]:
        source = job.params["source"]
        if source == "selection":
            return  # items were given at launch
        if source == "front":
            yield from self.plan_front(job, cursor)
        else:
            yield from self.plan_mailbox(job, source, cursor)

    def plan_front(self, job: Job, cursor: str) -> Iterator[Page]:
        """Front's conversation search, page by page; the cursor is the next page's URL."""
        state = json.loads(cursor) if cursor else {}
        client = front.FrontClient()
        try:
            url = state.get("next") or client.search_url(settings.FRONT_INBOX_ID, after_of(job))
            pages = state.get("pages", 0)
            for conversations, next_url in client.conversation_pages(url):
                pages += 1
                rows = [
                    Conversation(
                        source=Conversation.Source.FRONT,
                        external_id=str(c["id"]),
                        **front.conversation_fields(c),
                    )
                    for c in conversations
                    if c.get("id")
                ]
                stored = upsert_conversations(rows, keep_last_message_at=True)
                done = not next_url or pages >= job.params.get("max_pages", 10**9)
                yield Page(
                    [str(c.pk) for c in stored], json.dumps({"next": next_url, "pages": pages})
                )
                if done:
                    return
        finally:
            client.close()

    def plan_mailbox(self, job: Job, source: str, cursor: str) -> Iterator[Page]:
        """A mailbox's threads in pages; the cursor is "<threads read>:<pages yielded>"."""
        with mailbox_path(source) as path:
            read, _, pages = cursor.partition(":")
            read, pages = int(read or 0), int(pages or 0)
            after = after_of(job)
            max_pages = job.params.get("max_pages")
            batch: list[mailbox.Thread] = []
            # The first page gives every slot an item at once; later ones are larger.
            size = min(PAGE, max(FIRST_PAGE, job.concurrency)) if read == 0 else PAGE
            for index, thread in enumerate(mailbox.read_threads(path)):
                if index < read:
                    continue
                batch.append(thread)
                if len(batch) == size:
                    pages += 1
                    read = index + 1
                    yield Page(store_threads(batch, after), f"{read}:{pages}")
                    if max_pages and pages >= max_pages:
                        return
                    batch, size = [], PAGE
            if batch:
                yield Page(store_threads(batch, after), f"{read + len(batch)}:{pages + 1}")

    # -- items -----------------------------------------------------------------------------

    def warm_up(self) -> None:
        llm.warm_up(extract.SCHEMA)

    def setup_thread(self, job: Job):
        # A selection from the admin may hold Front conversations whatever the job's source.
        return front.FrontClient() if front.configured() else None

    def teardown_thread(self, job: Job, resource) -> None:
        if resource is not None:
            resource.close()

    def run_item(self, job: Job, item: Item) -> Outcome:
        conversation, messages = load_conversation(job, int(item.key))
        if conversation.source == Conversation.Source.FRONT:
            if item.resource is None:
                raise PermanentError("FRONT_API_TOKEN is not set: cannot read Front conversations")
            fetch_messages(item.resource, conversation)
            messages = thread_messages(conversation.pk)  # as just stored
        rescan = job.params.get("rescan", False)
        if not rescan and not conversation.needs_scan():
            return Outcome("skipped", "already scanned", {"already_scanned": 1})
        if conversation.earlier_id is not None:
            # This item ran before in this job and its worker died after the extraction:
            # keep that one rather than asking the model again.
            earlier = ExtractionResult.objects.get(pk=conversation.earlier_id)
            return record(job, conversation, result_of(earlier), reused=True)
        extractor = extract.choose(job.params.get("extractor", "auto"))
        try:
            if extractor == "openai":
                result = extract.with_openai(messages, timeout=settings.OPENAI_TIMEOUT)
            else:
                result = extract.with_rules(messages)
        except Exception as exc:
            record_error(job, conversation, extractor, exc)
            raise
        return record(job, conversation, result)

    def results_url(self, job: Job) -> str:
        return reverse("scanner:shipments") + f"?job={job.pk}"

    def final_tallies(self, job: Job) -> dict:
        tallies = dict(job.tallies)
        tallies["fetched"] = job.total
        tallies["errors"] = job.failed
        tokens = tallies.get("prompt_tokens", 0) + tallies.get("completion_tokens", 0)
        tallies["tokens_used"] = tokens
        tallies["estimated_cost_usd"] = round(
            llm.cost_usd(tallies.get("prompt_tokens", 0), tallies.get("completion_tokens", 0)), 6
        )
        return tallies

    def summary_line(self, job: Job) -> str:
        t = self.final_tallies(job)
        return (
            f"📊 Scan complete: {t['fetched']:,} conversations fetched, "
            f"{t.get('already_scanned', 0):,} already scanned, {t.get('processed', 0):,} processed "
            f"({t.get('with_tracking', 0):,} with tracking, "
            f"{t.get('without_tracking', 0):,} without), "
            f"{t.get('shipments_added', 0):,} shipments added, "
            f"{t.get('shipments_duplicate', 0):,} duplicates, {t['errors']:,} errors, "
            f"{t['tokens_used']:,} tokens (~${t['estimated_cost_usd']:.4f})"
        )


# The conversation, and the extraction an earlier attempt of the item stored in this job
# (`earlier_id`), in one statement: every item starts with it.
LOAD_SQL = """
SELECT {columns}, (SELECT e.id FROM {extraction} AS e
             WHERE e.conversation_id = c.id AND e.job_id = %(job)s AND e.error = '' LIMIT 1)
            AS earlier_id
FROM {conversation} AS c WHERE c.id = %(conversation)s
"""

# Its messages, oldest first (Message.Meta.ordering).
MESSAGES_SQL = """
SELECT sender_name, sender_address, sent_at, subject, body FROM {message}
WHERE conversation_id = %(conversation)s ORDER BY sent_at, id
"""


def load_conversation(job: Job, pk: int) -> tuple[Conversation, list[extract.Message]]:
    """The conversation (with `earlier_id`) and its messages as stored now.

    On PostgreSQL both statements go in one round trip; the item's other waits are the
    model and the record, so a round trip less is felt by every item.
    """
    fields = Conversation._meta.concrete_fields
    sql = LOAD_SQL.format(
        columns=", ".join(f"c.{f.column}" for f in fields),
        extraction=ExtractionResult._meta.db_table,
        conversation=Conversation._meta.db_table,
    )
    messages_sql = MESSAGES_SQL.format(message=Message._meta.db_table)
    params = {"job": job.pk, "conversation": pk}
    together = connection.vendor == "postgresql"  # SQLite runs one statement per call
    with connection.cursor() as cursor:
        cursor.execute(f"{sql};{messages_sql}" if together else sql, params)
        row = cursor.fetchone()
        if row is None:
            raise Conversation.DoesNotExist(f"conversation {pk} no longer exists")
        conversation = Conversation.from_db(
            connection.alias, [f.attname for f in fields], row[: len(fields)]
        )
        conversation.earlier_id = row[-1]
        if together:
            cursor.nextset()
        else:
            cursor.execute(messages_sql, params)
        messages = [extract.Message(*r) for r in cursor.fetchall()]
    return conversation, messages


def thread_messages(conversation_id: int) -> list[extract.Message]:
    """The conversation's messages, oldest first (Message.Meta.ordering), in plain SQL."""
    with connection.cursor() as cursor:
        cursor.execute(
            MESSAGES_SQL.format(message=Message._meta.db_table), {"conversation": conversation_id}
        )
        return [extract.Message(*row) for row in cursor.fetchall()]


def after_of(job: Job) -> date | None:
    after = job.params.get("after")
    return date.fromisoformat(after) if after else None


class mailbox_path:
    """The mailbox a source names, as a path; an upload is written to a temporary file."""

    def __init__(self, source: str):
        self.source = source
        self.temporary: str | None = None

    def __enter__(self) -> Path:
        kind, _, rest = self.source.partition(":")
        if kind == "upload":
            upload = MailboxUpload.objects.get(pk=int(rest))
            suffix = ".zip" if upload.name.lower().endswith(".zip") else ".mbox"
            handle, self.temporary = tempfile.mkstemp(suffix=suffix)
            with os.fdopen(handle, "wb") as out:
                out.write(upload.data)
            return Path(self.temporary)
        path = resolve_mailbox(rest)
        if not path.exists():
            raise PermanentError(f"there is no mailbox at {path}")
        return path

    def __exit__(self, *exc) -> None:
        if self.temporary:
            os.unlink(self.temporary)


def upsert_conversations(
    rows: list[Conversation], keep_last_message_at: bool = False
) -> list[Conversation]:
    """Insert or update conversations by (source, external id); return them with their ids."""
    if not rows:
        return []
    fields = ["subject", "participants"]
    if not keep_last_message_at:
        fields.append("last_message_at")
    return Conversation.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["source", "external_id"],
        update_fields=fields,
    )


def store_threads(threads: list[mailbox.Thread], after: date | None) -> list[str]:
    """Store a page of mailbox threads and their messages; return the items' keys."""
    if after:
        threads = [
            t for t in threads if t.last_message_at is None or t.last_message_at.date() >= after
        ]
    with transaction.atomic():
        stored = upsert_conversations(
            [
                Conversation(
                    source=Conversation.Source.MAILBOX,
                    external_id=t.root_id[:255],
                    subject=t.subject[:300],
                    participants=t.participants,
                    last_message_at=t.last_message_at,
                )
                for t in threads
            ]
        )
        messages = [
            Message(
                conversation=conversation,
                external_id=m.message_id[:255],
                sender_name=m.sender_name[:200],
                sender_address=m.sender_address[:254],
                sent_at=m.sent_at,
                subject=m.subject[:300],
                body=m.text,
            )
            for conversation, thread in zip(stored, threads, strict=True)
            for m in thread.messages
        ]
        Message.objects.bulk_create(
            messages,
            update_conflicts=True,
            unique_fields=["conversation", "external_id"],
            update_fields=["sender_name", "sender_address", "sent_at", "subject", "body"],
        )
    return [str(c.pk) for c in stored]


def fetch_messages(client: front.FrontClient, conversation: Conversation) -> None:
    """Store a Front conversation's messages; its last message time follows them."""
    fetched = client.messages(conversation.external_id)
    Message.objects.bulk_create(
        [
            Message(
                conversation=conversation,
                external_id=m.external_id,
                sender_name=m.sender_name,
                sender_address=m.sender_address,
                sent_at=m.sent_at,
                subject=m.subject,
                body=m.text,
            )
            for m in fetched
            if m.external_id
        ],
        update_conflicts=True,
        unique_fields=["conversation", "external_id"],
        update_fields=["sender_name", "sender_address", "sent_at", "subject", "body"],
    )
    times = [m.sent_at for m in fetched if m.sent_at]
    if times:
        conversation.last_message_at = max(times)
        participants = sorted({m.sender_address for m in fetched if m.sender_address})
        conversation.participants = participants or conversation.participants
        if not conversation.subject:
            conversation.subject = next((m.subject for m in fetched if m.subject), "")
        conversation.save(update_fields=["last_message_at", "participants", "subject"])


def result_of(extraction: ExtractionResult) -> extract.Result:
    """An extraction already recorded, as a Result to record again (idempotently)."""
    shipments = [
        {
            "tracking_number": s.tracking_number,
            "carrier": s.carrier,
            "po_number": s.po_number,
            "shipped_date": s.shipped_date.isoformat() if s.shipped_date else "",
            "confidence": s.confidence,
            "checksum_valid": s.checksum_valid,
        }
        for s in extraction.shipments.all()
    ]
    supplier = (extraction.output or {}).get("supplier", "")
    return extract.Result(
        extraction.extractor,
        supplier=supplier or next((s.supplier for s in extraction.shipments.all()), ""),
        shipments=shipments,
        output=extraction.output,
        rejected=extraction.rejected,
        model=extraction.model,
        llm_skipped=extraction.llm_skipped,
        latency_ms=extraction.latency_ms,
    )


# On PostgreSQL, recording an extraction is two statements whatever it found, sent in one
# round trip: the ORM took 2 ms of CPU a conversation to build the five statements it
# needed, more than the model call. The first stores the extraction (again, if this item
# re-runs), adds the shipments not yet known (a known tracking number is kept as it is)
# and marks the conversation scanned.
RECORD_SQL = """
WITH extraction AS (
    INSERT INTO {extraction} (conversation_id, job_id, extractor, model, output, rejected,
        llm_skipped, prompt_tokens, completion_tokens, latency_ms, error, created_at)
    VALUES (%(conversation)s, %(job)s, %(extractor)s, %(model)s, %(output)s::jsonb,
        %(rejected)s::jsonb, %(llm_skipped)s, %(prompt_tokens)s, %(completion_tokens)s,
        %(latency_ms)s, '', %(now)s)
    ON CONFLICT (conversation_id, job_id) DO UPDATE SET extractor = EXCLUDED.extractor,
        model = EXCLUDED.model, output = EXCLUDED.output, rejected = EXCLUDED.rejected,
        llm_skipped = EXCLUDED.llm_skipped, prompt_tokens = EXCLUDED.prompt_tokens,
        completion_tokens = EXCLUDED.completion_tokens, latency_ms = EXCLUDED.latency_ms,
        error = ''
    RETURNING id
), added AS (
    INSERT INTO {shipment} (tracking_number, carrier, po_number, supplier, shipped_date,
        confidence, checksum_valid, conversation_id, job_id, first_seen)
    SELECT number, carrier, po_number, %(supplier)s, shipped_date, confidence,
        checksum_valid, %(conversation)s, %(job)s, %(now)s
    FROM unnest(%(numbers)s::text[], %(carriers)s::text[], %(po_numbers)s::text[],
                %(dates)s::date[], %(confidences)s::float8[], %(checksums)s::boolean[])
        AS found (number, carrier, po_number, shipped_date, confidence, checksum_valid)
    ON CONFLICT (tracking_number) DO NOTHING
), scanned AS (
    UPDATE {conversation} SET scan_state = 'scanned', scanned_at = %(now)s,
        scanned_through = %(through)s, scan_error = ''
    WHERE id = %(conversation)s
)
SELECT id FROM extraction
"""

# The second, a statement later so it sees numbers other scans added meanwhile, links the
# extraction to every shipment it named and counts those this job added from here.
LINK_SQL = """
WITH stored AS (
    SELECT id, job_id, conversation_id FROM {shipment} WHERE tracking_number = ANY(%(numbers)s)
), linked AS (
    INSERT INTO {links} (extractionresult_id, shipment_id)
    SELECT e.id, stored.id FROM stored, {extraction} AS e
    WHERE e.conversation_id = %(conversation)s AND e.job_id = %(job)s
    ON CONFLICT DO NOTHING
)
SELECT count(*) FROM stored WHERE job_id = %(job)s AND conversation_id = %(conversation)s
"""


def record_sql(sql: str) -> str:
    return sql.format(
        extraction=ExtractionResult._meta.db_table,
        shipment=Shipment._meta.db_table,
        conversation=Conversation._meta.db_table,
        links=ExtractionResult.shipments.through._meta.db_table,
    )


def store_extraction(
    job: Job, conversation: Conversation, result: extract.Result, output: dict, now
) -> int:
    """Store an extraction and its shipments, mark the conversation scanned (RECORD_SQL,
    LINK_SQL); return how many shipments this job added from this conversation.

    The two statements go in one query string: PostgreSQL runs such a string as one
    transaction (or inside the caller's), so it is all or nothing without BEGIN and COMMIT
    round trips of its own.
    """
    params = {
        "conversation": conversation.pk,
        "job": job.pk,
        "now": now,
        "extractor": result.extractor,
        "model": result.model,
        "output": json.dumps(output),
        "rejected": json.dumps(result.rejected),
        "llm_skipped": result.llm_skipped,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "latency_ms": result.latency_ms,
        "through": conversation.last_message_at,
        "numbers": [s["tracking_number"] for s in result.shipments],
        "carriers": [s["carrier"] for s in result.shipments],
        "po_numbers": [s["po_number"] for s in result.shipments],
        "supplier": result.supplier,
        "dates": [s["shipped_date"] or None for s in result.shipments],
        "confidences": [s["confidence"] for s in result.shipments],
        "checksums": [s["checksum_valid"] for s in result.shipments],
    }
    with connection.cursor() as cursor:
        cursor.execute(f"{record_sql(RECORD_SQL)};{record_sql(LINK_SQL)}", params)
        cursor.nextset()
        (added,) = cursor.fetchone()
    return added


def store_extraction_orm(
    job: Job, conversation: Conversation, result: extract.Result, output: dict, now
) -> int:
    """store_extraction through the ORM, for databases other than PostgreSQL."""
    numbers = [s["tracking_number"] for s in result.shipments]
    with transaction.atomic():
        (extraction,) = ExtractionResult.objects.bulk_create(
            [
                ExtractionResult(
                    conversation=conversation,
                    job=job,
                    extractor=result.extractor,
                    model=result.model,
                    output=output,
                    rejected=result.rejected,
                    llm_skipped=result.llm_skipped,
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    latency_ms=result.latency_ms,
                    error="",
                )
            ],
            update_conflicts=True,
            unique_fields=["conversation", "job"],
            update_fields=[
                "extractor",
                "model",
                "output",
                "rejected",
                "llm_skipped",
                "prompt_tokens",
                "completion_tokens",
                "latency_ms",
                "error",
            ],
        )
        if numbers:
            # Known tracking numbers are kept as they are (ON CONFLICT DO NOTHING) and linked.
            Shipment.objects.bulk_create(
                [
                    Shipment(
                        tracking_number=found["tracking_number"],
                        carrier=found["carrier"],
                        po_number=found["po_number"],
                        supplier=result.supplier,
                        shipped_date=found["shipped_date"] or None,
                        confidence=found["confidence"],
                        checksum_valid=found["checksum_valid"],
                        conversation=conversation,
                        job=job,
                        first_seen=now,
                    )
                    for found in result.shipments
                ],
                ignore_conflicts=True,
            )
            stored = list(
                Shipment.objects.filter(tracking_number__in=numbers).values_list(
                    "pk", "job_id", "conversation_id"
                )
            )
            ExtractionResult.shipments.through.objects.bulk_create(
                [
                    ExtractionResult.shipments.through(
                        extractionresult_id=extraction.pk, shipment_id=pk
                    )
                    for pk, _, _ in stored
                ],
                ignore_conflicts=True,
            )
            # Added here: by this job from this conversation (also when this item re-runs).
            added = sum(1 for _, j, c in stored if j == job.pk and c == conversation.pk)
        else:
            added = 0
        Conversation.objects.filter(pk=conversation.pk).update(
            scan_state=Conversation.ScanState.SCANNED,
            scanned_at=now,
            scanned_through=conversation.last_message_at,
            scan_error="",
        )
    return added


def record(
    job: Job, conversation: Conversation, result: extract.Result, reused: bool = False
) -> Outcome:
    """Store an extraction and its shipments, and mark the conversation scanned."""
    now = timezone.now()
    output = result.output
    if output is None:
        output = {"supplier": result.supplier, "shipments": result.shipments}
    # SQLite (local runs) takes the ORM's way: no unnest() nor data-changing CTEs there.
    postgresql = connection.vendor == "postgresql"
    store = store_extraction if postgresql else store_extraction_orm
    added = store(job, conversation, result, output, now)
    found = len(result.shipments)
    duplicate = found - added
    tallies = {
        "processed": 1,
        "with_tracking" if found else "without_tracking": 1,
        "shipments_added": added,
        "shipments_duplicate": duplicate,
    }
    if not reused:
        tallies["prompt_tokens"] = result.prompt_tokens
        tallies["completion_tokens"] = result.completion_tokens
        if result.extractor == "openai":
            tallies["llm_skipped" if result.llm_skipped else "llm_calls"] = 1
            tallies["tokens_saved"] = result.tokens_saved
    summary = f"{found} tracking number{'s' if found != 1 else ''}"
    if found:
        summary += ": " + ", ".join(s["tracking_number"] for s in result.shipments[:5])
    return Outcome("succeeded", summary[:300], {k: v for k, v in tallies.items() if v})


def record_error(job: Job, conversation: Conversation, extractor: str, exc: Exception) -> None:
    """A failed extraction: on its record and on the conversation, which stays unscanned."""
    error = f"{type(exc).__name__}: {exc}"[:2000]
    with transaction.atomic():
        ExtractionResult.objects.update_or_create(
            conversation=conversation,
            job=job,
            defaults={"extractor": extractor, "error": error, "output": None},
        )
        Conversation.objects.filter(pk=conversation.pk).update(
            scan_state=Conversation.ScanState.ERROR, scan_error=error
        )
