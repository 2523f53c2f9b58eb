"""Import contacts from CSV, and preview their schedule from the same CSV format.

Callers: the import_contacts and preview_schedule commands, and the dashboard's upload view
(which wraps the uploaded file in text_stream()).

The format: a header line naming at least REQUIRED_COLUMNS (values may be empty where the rules
allow), optionally OPTIONAL_COLUMNS; other columns are ignored. Column names and values are
stripped of surrounding spaces, column names are case-insensitive. A line with no values at all
(blank, or only commas) is skipped and not counted.

Row numbers are line numbers as a person counts them in the file: the header is line 1, so the
first data row is row 2; a row whose quoted value spans several lines is numbered by its first
line.

Import decisions:
- A contact is identified by (organization, `id`): a second import updates it, never duplicates
  it; the same `id` in two organizations is two contacts. The same `id` twice in one file and
  organization: the last row wins, and it counts as an update.
- The organization is the `organization` argument for every row when given (a file's
  organization column is then ignored), else the row's organization column. A row with neither
  is a bad row; no default organization is made up.
- A bad row is reported (one RowError per bad field) and not saved; it never stops the import.
  Rows that cannot be read (wrong number of values, not UTF-8, a NUL character, a value over the
  csv module's field limit) are bad rows with field "row".
- `topics` and `unsubscribed` (optional) list topic names separated by `;`, `*` meaning every
  topic: the topics the contact opted into, and out of. A file with the column states the
  contact's whole list: it replaces the contact's earlier opt-ins (or opt-outs), an empty
  value clears them; a file without it leaves them as they are. An unknown topic makes the
  row bad. (Whether a contact receives a topic: ContactQuerySet.receiving.)
- Validation uses the rule engine's parsers (state, dates, birth date not after today), so the
  import and the preview agree; besides, `id` and `email` are required, `email` must look like
  an address, and no value may be longer than its column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import IO, TextIO

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from scheduler_app import rules
from scheduler_app.models import (
    Contact,
    ContactImport,
    ContactImportPart,
    Organization,
    Subscription,
    Topic,
)

REQUIRED_COLUMNS = (
    "id",
    "first_name",
    "last_name",
    "email",
    "state",
    "birth_date",
    "effective_date",
)
OPTIONAL_COLUMNS = (
    "phone",
    "zip",
    "carrier",
    "plan_type",
    "organization",
    "topics",
    "unsubscribed",
)
# CSV column -> Contact field, for the plain text values.
TEXT_COLUMNS = {
    "id": "external_id",
    "first_name": "first_name",
    "last_name": "last_name",
    "email": "email",
    "phone": "phone",
    "zip": "zip_code",
    "carrier": "carrier",
    "plan_type": "plan_type",
}
# What an upsert rewrites: every data field, never created_at.
UPDATE_FIELDS = [*TEXT_COLUMNS.values(), "state", "birth_date", "effective_date", "updated_at"]
# The subscription columns and the choice each records; `*` in them means every topic.
SUBSCRIPTION_COLUMNS = {
    "topics": Subscription.Status.SUBSCRIBED,
    "unsubscribed": Subscription.Status.UNSUBSCRIBED,
}
EVERY_TOPIC = "*"
# A report keeps this many RowErrors and counts the rest, so a file of garbage keeps memory flat.
MAX_LISTED_ERRORS = 10_000
MAX_LENGTHS = {
    **{column: Contact._meta.get_field(name).max_length for column, name in TEXT_COLUMNS.items()},
    "organization": Organization._meta.get_field("name").max_length,
}


class HeaderError(ValueError):
    """The file cannot be imported at all: empty, not CSV, or required columns missing."""


@dataclass
class RowError:
    """One bad field of one row; row is the row's line number in the file (header = 1)."""

    row: int
    field: str
    value: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.field} {self.value!r}: {self.reason}"


@dataclass
class ImportReport:
    """What an import did: counts, the bad rows' errors, the organizations it wrote to.

    rows = created + updated + failed. errors lists at most MAX_LISTED_ERRORS errors;
    unlisted_errors counts the others.
    """

    rows: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0  # bad rows, each with one or more errors
    errors: list[RowError] = field(default_factory=list)
    unlisted_errors: int = 0
    organizations: set[str] = field(default_factory=set)

    def add_error(self, error: RowError) -> None:
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(error)
        else:
            self.unlisted_errors += 1

    def errors_csv(self) -> str:
        """The errors as CSV with the header row,field,value,reason, for download.

        When errors were left out, a last line says how many (its reason column only).
        """
        return errors_csv(self.error_lines(), len(self.errors), self.unlisted_errors)

    def error_lines(self) -> str:
        """The listed errors as CSV lines, without the header line."""
        out = io.StringIO()
        writer = csv.writer(out)
        for error in self.errors:
            writer.writerow([error.row, error.field, spreadsheet_safe(error.value), error.reason])
        return out.getvalue()


def errors_csv(lines: str, listed: int, unlisted: int) -> str:
    """A report: the header line, error lines, and a line counting the unlisted errors."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["row", "field", "value", "reason"])
    out.write(lines)
    if unlisted:
        note = f"... and {unlisted:,} more errors (a report lists the first {listed:,})"
        writer.writerow(["", "", "", note])
    return out.getvalue()


def spreadsheet_safe(value: str) -> str:
    """Keep a spreadsheet from running an uploaded value as a formula (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


@dataclass
class CsvRow:
    """One data row of the file, as read_rows() yields it.

    values are stripped and keyed by column name; problem says why the row could not be read,
    and is "" when it could.
    """

    line: int
    values: dict[str, str]
    problem: str = ""
    raw: str = ""  # the row as read, printable, for the report of an unreadable row


def text_stream(binary: IO[bytes]) -> TextIO:
    """Wrap an uploaded file for import_contacts() / preview_csv().

    Bytes that are not UTF-8 become bad rows instead of an exception halfway through the file.
    """
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")


def open_csv(path: str) -> TextIO:
    """Open a CSV file the way the commands read it; see text_stream()."""
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115


def read_rows(stream: TextIO | Iterable[str]) -> Iterator[CsvRow]:
    """Check the header now (HeaderError), then yield the data rows one at a time."""
    reader = csv.reader(stream)
    try:
        header = next(reader, None)
    except UnicodeDecodeError:
        raise HeaderError("the file is not UTF-8 text (save it as CSV UTF-8)") from None
    except csv.Error as exc:
        raise HeaderError(f"the header line cannot be read: {exc}") from None
    if not header:
        raise HeaderError("the file is empty (the first line must name the columns)")
    # A caller that decoded with "utf-8" rather than "utf-8-sig" leaves Excel's byte order mark.
    header[0] = header[0].removeprefix("\ufeff")
    columns = [name.strip().lower() for name in header]
    text = ",".join(columns)
    if _unreadable(text):
        raise HeaderError("the header line is not UTF-8 text (save the file as CSV UTF-8)")
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise HeaderError(
            f"missing required columns: {', '.join(missing)} "
            f"(the header line reads {_shorten(text)!r}; columns are separated by commas)"
        )
    duplicated = sorted({name for name in columns if name and columns.count(name) > 1})
    if duplicated:
        raise HeaderError(f"duplicated columns: {', '.join(duplicated)}")
    return _data_rows(reader, columns)


def _data_rows(reader, columns: list[str]) -> Iterator[CsvRow]:
    while True:
        line = reader.line_num + 1  # where the next row starts
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a value over the field limit; the reader goes on after it
            yield CsvRow(line, {}, problem=str(exc))
            continue
        except UnicodeDecodeError:
            # Only from a stream decoded strictly (not text_stream() or open_csv()). It decodes
            # a block at a time and cannot resume, so nothing from this row on can be read.
            problem = "is not UTF-8 text: this row and the rest of the file were not read"
            yield CsvRow(line, {}, problem=problem)
            return
        if not any(value.strip() for value in fields):
            continue
        values = {name: value.strip() for name, value in zip(columns, fields, strict=False)}
        text = ",".join(fields)
        if len(fields) != len(columns):
            problem = f"has {len(fields)} values, the header has {len(columns)} columns"
        elif "\x00" in text:
            problem = "contains a NUL character"
        elif _unreadable(text):
            problem = "is not UTF-8 text (save the file as CSV UTF-8)"
        else:
            yield CsvRow(line, values)
            continue
        printable = {name: _printable(value) for name, value in values.items()}
        yield CsvRow(line, printable, problem=problem, raw=_shorten(_printable(text)))


def _unreadable(text: str) -> bool:
    """Whether text holds bytes that were not UTF-8 (lone surrogates from surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _printable(text: str) -> str:
    """text with undecodable bytes and NULs spelled out, safe for PostgreSQL and a terminal."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.replace("\x00", "\\x00")


def terminal_safe(text: str) -> str:
    """text with what a terminal would act on spelled out: escapes, bidi overrides, controls.

    For command output that shows values from a file (the preview's table, import reports);
    every character str.isprintable() refuses becomes its Python escape, e.g. \\x1b, \\u202e.
    """
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def _shorten(text: str, length: int = 200) -> str:
    return text if len(text) <= length else text[: length - 3] + "..."


def _reason(err: rules.RuleError, text: str) -> str:
    """The rule engine's message without the field and value a RowError already has."""
    return str(err).removeprefix(f"{err.field}: ").removeprefix(f"{text!r} ")


def _check_row(row: CsvRow, organization: str, today: date) -> tuple[dict, list[RowError]]:
    """The Contact field values of a good row, and one RowError per bad field."""
    values, line = row.values, row.line
    data = {}
    errors = []
    for column, field_name in TEXT_COLUMNS.items():
        text = values.get(column, "")
        if len(text) > MAX_LENGTHS[column]:
            reason = f"is longer than {MAX_LENGTHS[column]} characters"
            errors.append(RowError(line, column, text, reason))
        elif column in ("id", "email") and not text:
            errors.append(RowError(line, column, text, "missing"))
        elif column == "email":
            try:
                validate_email(text)
            except ValidationError:
                errors.append(RowError(line, column, text, "is not an email address"))
        data[field_name] = text

    text = values["state"]
    try:
        data["state"] = rules.parse_state(text)
    except rules.RuleError as err:
        errors.append(RowError(line, "state", text, _reason(err, text)))
    for column in ("birth_date", "effective_date"):
        text = values[column]
        try:
            data[column] = rules.parse_date(text, column)
        except rules.RuleError as err:
            errors.append(RowError(line, column, text, _reason(err, text)))
    # The same rule as rules.parse_contact(), which stops at the first bad field.
    birth = data.get("birth_date")
    if birth is not None and birth > today:
        reason = f"is after today ({today})"
        errors.append(RowError(line, "birth_date", values["birth_date"], reason))

    if not organization:
        reason = "missing (give the file an organization column, or choose an organization)"
        errors.append(RowError(line, "organization", organization, reason))
    elif len(organization) > MAX_LENGTHS["organization"]:
        reason = f"is longer than {MAX_LENGTHS['organization']} characters"
        errors.append(RowError(line, "organization", organization, reason))
    return data, errors


def _check_subscriptions(
    row: CsvRow, topics: dict[str, int]
) -> tuple[dict[str, set[int | None]], list[RowError]]:
    """The row's subscription columns as {status: topic ids (None: every topic)}, and errors.

    Only the columns the file has are in the result: those replace the contact's choices.
    """
    choices: dict[str, set[int | None]] = {}
    errors = []
    for column, status in SUBSCRIPTION_COLUMNS.items():
        if column not in row.values:
            continue
        text = row.values[column]
        names = [name.strip().lower() for name in text.split(";") if name.strip()]
        unknown = [name for name in names if name != EVERY_TOPIC and name not in topics]
        if unknown:
            listed = ", ".join(map(repr, unknown))
            reason = f"unknown topics {listed} (topics: {', '.join(sorted(topics))}, or *)"
            errors.append(RowError(row.line, column, text, reason))
        choices[status] = {None if name == EVERY_TOPIC else topics.get(name) for name in names}
    return choices, errors


def _save_subscriptions(
    choices: dict[tuple[int, str], dict[str, set[int | None]]],
) -> None:
    """Replace the saved contacts' subscriptions of the statuses their rows gave."""
    if not choices:
        return
    contact_ids = {
        (organization_id, external_id): pk
        for pk, organization_id, external_id in Contact.objects.filter(
            organization_id__in={org for org, _ in choices},
            external_id__in=[external_id for _, external_id in choices],
        ).values_list("id", "organization_id", "external_id")
    }
    for status in SUBSCRIPTION_COLUMNS.values():
        chosen = {
            contact_ids[key]: row[status]
            for key, row in choices.items()
            if status in row and key in contact_ids
        }
        if not chosen:
            continue
        Subscription.objects.filter(contact_id__in=list(chosen), status=status).delete()
        Subscription.objects.bulk_create(
            Subscription(contact_id=contact_id, topic_id=topic_id, status=status)
            for contact_id, topic_ids in chosen.items()
            for topic_id in topic_ids
        )


def import_contacts(
    stream: TextIO | Iterable[str],
    *,
    organization: str | None = None,
    batch_size: int = 2000,
    progress: Callable[[ImportReport], None] | None = None,
    may_update: bool = True,
) -> ImportReport:
    """Validate every row and upsert the good ones by (organization, id); report the bad ones.

    Raises HeaderError before saving anything when the file cannot be imported at all.
    With may_update False (a user without scheduler_app.change_contact), a row whose contact
    exists already, or whose id an earlier row of the file used, is a bad row.

    1. Read the header (HeaderError when a required column is missing).
    2. For each row: check every field; a bad row adds its errors to the report and is skipped.
    3. Collect good rows by (organization, id) until batch_size distinct contacts are waiting;
       a later row with the same key replaces the waiting one.
    4. Save a batch in one transaction: one query for which contacts exist (so created and
       updated are exact), one INSERT ... ON CONFLICT DO UPDATE, then the subscription
       columns' choices. A failure later in the file keeps the batches already saved.
    5. progress(report) after each batch, for a caller that shows progress.
    """
    rows = read_rows(stream)
    organization = (organization or "").strip() or None
    today = timezone.localdate()
    report = ImportReport()
    organization_ids: dict[str, int] = {}
    waiting: dict[tuple[int, str], Contact] = {}
    lines: dict[tuple[int, str], int] = {}  # the row each waiting contact comes from
    choices: dict[tuple[int, str], dict] = {}  # their subscription columns, if the file has any
    topics = dict(Topic.objects.values_list("name", "id"))

    for row in rows:
        report.rows += 1
        if row.problem:
            report.failed += 1
            report.add_error(RowError(row.line, "row", row.raw, row.problem))
            continue
        name = organization or row.values.get("organization", "")
        data, errors = _check_row(row, name, today)
        row_choices, topic_errors = _check_subscriptions(row, topics)
        errors += topic_errors
        if errors:
            report.failed += 1
            for error in errors:
                report.add_error(error)
            continue

        if name not in organization_ids:
            organization_ids[name] = Organization.objects.get_or_create(name=name)[0].pk
            report.organizations.add(name)
        key = (organization_ids[name], data["external_id"])
        if key in waiting and not may_update:
            report.failed += 1
            reason = f"repeats the id of row {lines[key]}; {NO_UPDATES}"
            report.add_error(RowError(row.line, "id", data["external_id"], reason))
            continue
        if key in waiting:
            report.updated += 1  # the earlier row of this file created or updated it
        waiting[key] = Contact(organization_id=key[0], **data)
        lines[key] = row.line
        if row_choices:
            choices[key] = row_choices
        if len(waiting) >= batch_size:
            _save_batch(waiting, lines, report, may_update, choices)
            waiting, lines, choices = {}, {}, {}
            if progress:
                progress(report)

    if waiting:
        _save_batch(waiting, lines, report, may_update, choices)
    if progress:
        progress(report)
    report.errors.sort(key=lambda error: error.row)  # refused updates come at a batch's end
    return report


# Why a row may not update its contact (the reason column of the report).
NO_UPDATES = "updating contacts needs the permission to change contacts"


def _save_batch(
    waiting: dict[tuple[int, str], Contact],
    lines: dict[tuple[int, str], int],
    report: ImportReport,
    may_update: bool,
    choices: dict[tuple[int, str], dict] | None = None,
) -> None:
    with transaction.atomic():
        existing = set(
            Contact.objects.filter(
                organization_id__in={org for org, _ in waiting},
                external_id__in=[external_id for _, external_id in waiting],
            ).values_list("organization_id", "external_id")
        )
        if not may_update:
            for key in existing & waiting.keys():
                del waiting[key]
                report.failed += 1
                reason = f"a contact with this id exists; {NO_UPDATES}"
                report.add_error(RowError(lines[key], "id", key[1], reason))
            existing = set()
        Contact.objects.bulk_create(
            waiting.values(),
            unique_fields=["organization", "external_id"],
            # Without the permission, a contact created since the query above stays as it is.
            **(
                {"update_conflicts": True, "update_fields": UPDATE_FIELDS}
                if may_update
                else {"ignore_conflicts": True}
            ),
        )
        _save_subscriptions({key: c for key, c in (choices or {}).items() if key in waiting})
    updated = len(existing & waiting.keys())
    report.updated += updated
    report.created += len(waiting) - updated


def save_report(
    report: ImportReport, *, filename: str = "", organization: str = "", user=None
) -> ContactImport:
    """Record an import for the dashboard's history, with its errors as downloadable CSV.

    organization defaults to the names of the organizations the import wrote to.
    """
    if not organization:
        organization = ", ".join(sorted(report.organizations))
    return ContactImport.objects.create(
        created_by=user,
        filename=filename[:255],
        organization=_shorten(organization),
        rows=report.rows,
        created=report.created,
        updated=report.updated,
        failed=report.failed,
        errors_csv=report.errors_csv(),
    )


# -- Uploads imported by a job ---------------------------------------------------------------

PART_ROWS = 2000  # rows of an upload one job item imports (one transaction)


def split_rows(text: str, rows_per_part: int) -> tuple[str, list[tuple[int, str]]]:
    """The header line, and the data rows in parts: (line of the part's first row, its text).

    Parts end where the csv module ends a row, so a quoted value over several lines stays in
    one part. Raises HeaderError as import_contacts() would.
    """
    read_rows(io.StringIO(text, newline=""))  # HeaderError now, not in a worker
    consumed: list[str] = []

    def lines():
        for line in io.StringIO(text, newline=""):
            consumed.append(line)
            yield line

    reader = csv.reader(lines())
    next(reader)
    header = "".join(consumed)
    parts, rows, first_line = [], 0, reader.line_num + 1
    consumed.clear()
    while True:
        try:
            next(reader)
        except StopIteration:
            break
        except csv.Error:
            pass  # an unreadable row: its part reports it
        rows += 1
        if rows == rows_per_part:
            parts.append((first_line, "".join(consumed)))
            consumed.clear()
            rows, first_line = 0, reader.line_num + 1
    if consumed:
        parts.append((first_line, "".join(consumed)))
    return header, parts


def store_upload(
    text: str, *, filename: str, organization: str, may_update: bool, user
) -> ContactImport:
    """Record an uploaded file, split into parts for the import job; HeaderError if unusable."""
    header, parts = split_rows(text, PART_ROWS)
    record = ContactImport.objects.create(
        created_by=user,
        filename=filename[:255],
        organization=organization,
        organization_option=organization,
        may_update=may_update,
        header=header,
        errors_csv=errors_csv("", 0, 0),
    )
    ContactImportPart.objects.bulk_create(
        ContactImportPart(
            contact_import=record, number=number, first_line=first_line, data=rows.encode()
        )
        for number, (first_line, rows) in enumerate(parts, start=1)
    )
    return record


def import_part(part: ContactImportPart) -> ImportReport | None:
    """Import one part of an upload (an item of its job); None if it was imported already.

    1. Read the part with the file's header, numbering rows by their line in the whole file.
    2. Upsert its good rows and record its counts and errors in one transaction, so a part
       that fails and is retried counts once.
    3. Recompute the import's counts and report from its imported parts, in file order.
    """
    with transaction.atomic():
        part = ContactImportPart.objects.select_for_update().get(pk=part.pk)
        if part.imported:
            return None
        record = ContactImport.objects.select_for_update().get(pk=part.contact_import_id)
        stream = text_stream(io.BytesIO(record.header.encode() + bytes(part.data)))
        report = import_contacts(
            stream,
            organization=record.organization_option or None,
            batch_size=PART_ROWS,
            may_update=record.may_update,
        )
        # In its stream, the part's first row comes right after the header's line(s).
        offset = part.first_line - len(io.StringIO(record.header, newline="").readlines()) - 1
        for error in report.errors:
            error.row += offset
        ContactImportPart.objects.filter(pk=part.pk).update(
            imported=True,
            data=b"",
            rows=report.rows,
            created=report.created,
            updated=report.updated,
            failed=report.failed,
            errors_listed=len(report.errors),
            errors_unlisted=report.unlisted_errors,
            error_lines=report.error_lines(),
            organizations=sorted(report.organizations),
        )
        _total(record)
    return report


def _total(record: ContactImport) -> None:
    """Sum an upload's imported parts into its record: counts, organizations, the report."""
    parts = record.parts.filter(imported=True).order_by("number")
    counts = ("rows", "created", "updated", "failed")
    lines, listed, unlisted, organizations = [], 0, 0, set()
    for name in counts:
        setattr(record, name, 0)
    for part in parts.defer("data"):
        for name in counts:
            setattr(record, name, getattr(record, name) + getattr(part, name))
        organizations.update(part.organizations)
        # Whole parts while they fit under MAX_LISTED_ERRORS; the rest are counted.
        if listed + part.errors_listed <= MAX_LISTED_ERRORS:
            lines.append(part.error_lines)
            listed += part.errors_listed
            unlisted += part.errors_unlisted
        else:
            unlisted += part.errors_listed + part.errors_unlisted
    record.errors_csv = errors_csv("".join(lines), listed, unlisted)
    record.organization = record.organization_option or _shorten(", ".join(sorted(organizations)))
    record.save(
        update_fields=["rows", "created", "updated", "failed", "errors_csv", "organization"]
    )


def preview_csv(stream: TextIO | Iterable[str], today: date) -> Iterator[dict]:
    """The preview_schedule results of a CSV file, one per data row in file order.

    Each is {"id", "emails": [{"type", "date"}]} or {"id", "error"}, as rules.preview()
    makes them. Raises HeaderError at once (before any result) when the header is unusable.
    Only what the rules use is validated (state and dates), and the row's shape.
    """
    return _preview(read_rows(stream), today)


def _preview(rows: Iterator[CsvRow], today: date) -> Iterator[dict]:
    # rules.preview() cannot see the unreadable rows, and they must not take an AEP position,
    # so this is its loop with one more kind of error.
    position = 0
    for row in rows:
        row_id = row.values.get("id", "")
        if row.problem:
            yield {"id": row_id, "error": f"row: {row.problem}"}
            continue
        values = row.values
        try:
            contact = rules.parse_contact(
                values["state"], values["birth_date"], values["effective_date"], today
            )
        except rules.RuleError as err:
            yield {"id": row_id, "error": str(err)}
            continue
        emails = []
        if rules.is_eligible(contact):
            emails = rules.compute_emails(contact, today, position)
            position += 1
        yield {
            "id": row_id,
            "emails": [{"type": e.type, "date": e.date.isoformat()} for e in emails],
        }
