"""Contact CSV import: upserts, bad rows reported with row/field/value/reason, the command."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import date

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.utils import timezone

from scheduler_app import importer
from scheduler_app.importer import HeaderError, RowError, import_contacts, save_report, text_stream
from scheduler_app.models import Contact, ContactImport, Organization
from tests.conftest import ROOT, worker_env

HEADER = "id,first_name,last_name,email,state,birth_date,effective_date"
NOT_A_DATE = "is not a date (use YYYY-MM-DD or M/D/YYYY)"


def csv_file(*rows: str, header: str = HEADER) -> io.StringIO:
    """A CSV file of the header and rows (each one line of text): the header is line 1."""
    return io.StringIO("".join(line + "\n" for line in (header, *rows)))


def contacts(organization: str) -> dict[str, Contact]:
    return {c.external_id: c for c in Contact.objects.filter(organization__name=organization)}


def test_it_creates_contacts_then_updates_them_by_organization_and_id(db):
    report = import_contacts(
        csv_file(
            " 1 , Ann , Lee , ann@example.com , tx , 1950-05-20 , 11/1/2015 ",
            "2,Bob,Ray,bob@example.com,CA,,",
        ),
        organization="Acme",
    )
    assert (report.rows, report.created, report.updated, report.failed) == (2, 2, 0, 0)
    assert report.errors == []
    assert report.organizations == {"Acme"}
    ann = contacts("Acme")["1"]
    assert (ann.first_name, ann.last_name, ann.email, ann.state) == (
        "Ann",
        "Lee",
        "ann@example.com",
        "TX",
    )
    assert (ann.birth_date, ann.effective_date) == (date(1950, 5, 20), date(2015, 11, 1))

    report = import_contacts(
        csv_file("1,Ann,Lee-Smith,ann@example.com,TX,1950-05-20,", "3,Cy,Oh,cy@example.com,NV,,"),
        organization="Acme",
    )
    assert (report.rows, report.created, report.updated, report.failed) == (2, 1, 1, 0)
    assert Contact.objects.count() == 3
    updated = contacts("Acme")["1"]
    assert (updated.pk, updated.last_name, updated.effective_date) == (ann.pk, "Lee-Smith", None)
    assert updated.created_at == ann.created_at
    assert updated.updated_at > ann.updated_at


def test_the_same_id_in_two_organizations_is_two_contacts(db):
    file = csv_file(
        "1,Ann,Lee,ann@example.com,TX,,,Acme",
        "1,Ann,Other,ann@example.org,FL,,,Zenith",
        header=HEADER + ",organization",
    )
    report = import_contacts(file)
    assert (report.created, report.updated) == (2, 0)
    assert report.organizations == {"Acme", "Zenith"}
    assert contacts("Acme")["1"].last_name == "Lee"
    assert contacts("Zenith")["1"].last_name == "Other"


def test_a_repeated_id_in_one_file_is_updated_by_its_last_row_with_exact_counts(db):
    Organization.objects.create(name="Acme")
    import_contacts(csv_file("9,Old,Row,old@example.com,TX,,"), organization="Acme")
    # batch_size=2: the repeats fall both inside one batch and across batches.
    report = import_contacts(
        csv_file(
            "1,First,A,a@example.com,TX,,",
            "2,Two,B,b@example.com,TX,,",
            "1,Second,A,a@example.com,TX,,",
            "9,New,Row,new@example.com,TX,,",
            "3,Three,C,c@example.com,TX,,",
            "1,Third,A,a@example.com,TX,,",
        ),
        organization="Acme",
        batch_size=2,
    )
    assert (report.rows, report.created, report.updated, report.failed) == (6, 3, 3, 0)
    saved = contacts("Acme")
    assert sorted(saved) == ["1", "2", "3", "9"]
    assert (saved["1"].first_name, saved["9"].first_name) == ("Third", "New")


def test_every_bad_field_is_reported_with_row_field_value_and_reason_and_good_rows_are_saved(db):
    long_id, long_name = "x" * 65, "N" * 101
    future = "2999-01-01"
    report = import_contacts(
        csv_file(
            "ok-1,Ann,Lee,ann@example.com,TX,1950-05-20,2015-11-01",  # row 2
            ",Ann,Lee,ann@example.com,TX,,",
            f"{long_id},Ann,Lee,ann@example.com,TX,,",
            f"r5,{long_name},Lee,ann@example.com,TX,,",
            "r6,Ann,Lee,,TX,,",
            "r7,Ann,Lee,ann@,TX,,",
            "r8,Ann,Lee,ann@example.com,ZZ,,",
            "r9,Ann,Lee,ann@example.com,,,",
            "r10,Ann,Lee,ann@example.com,TX,13/45/1990,",
            f"r11,Ann,Lee,ann@example.com,TX,{future},",
            "r12,Ann,Lee,ann@example.com,TX,,2023-02-29",
            "r13,Ann,Lee,nobody,Texas,1950-5-20,2015/11/01",
            "ok-14,Bob,Ray,bob@example.com,ca,,",
        ),
        organization="Acme",
    )
    today = timezone.localdate()
    assert report.errors == [
        RowError(3, "id", "", "missing"),
        RowError(4, "id", long_id, "is longer than 64 characters"),
        RowError(5, "first_name", long_name, "is longer than 100 characters"),
        RowError(6, "email", "", "missing"),
        RowError(7, "email", "ann@", "is not an email address"),
        RowError(8, "state", "ZZ", "is not a US state code"),
        RowError(9, "state", "", "missing (use a two-letter US state code)"),
        RowError(10, "birth_date", "13/45/1990", NOT_A_DATE),
        RowError(11, "birth_date", future, f"is after today ({today})"),
        RowError(12, "effective_date", "2023-02-29", NOT_A_DATE),
        RowError(13, "email", "nobody", "is not an email address"),
        RowError(13, "state", "Texas", "is not a US state code"),
        RowError(13, "birth_date", "1950-5-20", NOT_A_DATE),
        RowError(13, "effective_date", "2015/11/01", NOT_A_DATE),
    ]
    assert (report.rows, report.created, report.updated, report.failed) == (13, 2, 0, 11)
    assert sorted(contacts("Acme")) == ["ok-1", "ok-14"]


def test_rows_that_cannot_be_read_are_bad_rows_numbered_by_their_line_in_the_file(db):
    huge = "y" * 200_000  # over the csv module's field limit
    raw = (
        HEADER.encode()
        + b"\n"
        + b'1,"Ann\nMarie",Lee,ann@example.com,TX,,\n'  # lines 2-3: a quoted line break
        + b"2,Bob,Ray\n"  # line 4: too few values
        + b"3,Cy,Oh,cy@example.com,TX,,,extra\n"  # line 5: too many
        + b"\n"  # line 6: blank, skipped
        + b"4,Caf\xe9,Oh,cafe@example.com,TX,,\n"  # line 7: Latin-1, not UTF-8
        + b"5,N\x00ul,Oh,nul@example.com,TX,,\n"  # line 8
        + b'6,"'
        + huge.encode()
        + b'",Oh,big@example.com,TX,,\n'  # line 9
        + b",,,,,,\n"  # line 10: only commas, skipped
        + b"7,Dee,Ng,dee@example.com,TX,,\n"  # line 11
    )
    report = import_contacts(text_stream(io.BytesIO(raw)), organization="Acme")
    assert [(e.row, e.field) for e in report.errors] == [(n, "row") for n in (4, 5, 7, 8, 9)]
    assert [e.reason for e in report.errors[:4]] == [
        "has 3 values, the header has 7 columns",
        "has 8 values, the header has 7 columns",
        "is not UTF-8 text (save the file as CSV UTF-8)",
        "contains a NUL character",
    ]
    assert "field larger than field limit" in report.errors[4].reason
    assert report.errors[0].value == "2,Bob,Ray"
    assert report.errors[2].value == "4,Caf\\xe9,Oh,cafe@example.com,TX,,"
    assert report.errors[3].value == "5,N\\x00ul,Oh,nul@example.com,TX,,"
    assert (report.rows, report.created, report.failed) == (7, 2, 5)
    saved = contacts("Acme")
    assert sorted(saved) == ["1", "7"]
    assert saved["1"].first_name == "Ann\nMarie"
    # The report of undecodable bytes and NULs can be stored.
    assert save_report(report).failed == 5


def test_a_strictly_decoded_stream_stops_at_bad_bytes_with_a_bad_row_and_keeps_earlier_rows(db):
    # Not how the commands and text_stream() read, but a caller may hand over such a stream.
    good = "".join(f"{n},Ann,Lee,ann@example.com,TX,,\n" for n in range(1000))
    raw = (HEADER + "\n" + good).encode() + b"x,Caf\xe9,Oh\n"
    stream = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", newline="")
    report = import_contacts(stream, organization="Acme")
    [error] = report.errors
    assert (error.field, error.reason) == (
        "row",
        "is not UTF-8 text: this row and the rest of the file were not read",
    )
    # The decoder works a block at a time: the rows before the block with the bad bytes are in.
    assert 2 < error.row <= 1002
    assert report.created == error.row - 2 == Contact.objects.count()
    assert report.failed == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        (
            "id,first_name,last_name,email,state\n1,A,B,a@example.com,TX\n",
            "birth_date, effective_date",
        ),
        ("id;first_name;last_name;email;state;birth_date;effective_date\n", "separated by commas"),
        (HEADER + ",ID\n", "duplicated columns: id"),
    ],
)
def test_a_file_without_the_required_columns_raises_header_error_and_saves_nothing(
    db, text, message
):
    with pytest.raises(HeaderError) as exc_info:
        import_contacts(io.StringIO(text), organization="Acme")
    assert message in str(exc_info.value)
    assert not Contact.objects.exists()
    assert not Organization.objects.exists()


def test_missing_columns_are_all_named(db):
    with pytest.raises(HeaderError) as exc_info:
        import_contacts(csv_file(header="id,email,state"))
    assert str(exc_info.value).startswith(
        "missing required columns: first_name, last_name, birth_date, effective_date"
    )


def test_column_names_ignore_case_spaces_order_and_unknown_columns(db):
    file = csv_file(
        "TX , 1 ,Ann,Lee,ann@example.com,,,whatever,555-0100,78701",
        header=" State ,ID,First_Name,last_name,EMAIL,birth_date,effective_date,notes,phone,zip",
    )
    report = import_contacts(file, organization="Acme")
    assert (report.created, report.failed) == (1, 0)
    ann = contacts("Acme")["1"]
    assert (ann.state, ann.phone, ann.zip_code) == ("TX", "555-0100", "78701")


def test_the_organization_option_wins_over_the_organization_column(db):
    file = csv_file(
        "1,Ann,Lee,ann@example.com,TX,,,Zenith",
        "2,Bob,Ray,bob@example.com,TX,,,",
        header=HEADER + ",organization",
    )
    report = import_contacts(file, organization="Acme")
    assert (report.created, report.failed) == (2, 0)
    assert report.organizations == {"Acme"}
    assert sorted(contacts("Acme")) == ["1", "2"]
    assert not Organization.objects.filter(name="Zenith").exists()


def test_a_row_without_an_organization_is_a_bad_row(db):
    file = csv_file(
        "1,Ann,Lee,ann@example.com,TX,,,Acme",
        "2,Bob,Ray,bob@example.com,TX,,,  ",
        header=HEADER + ",organization",
    )
    report = import_contacts(file)
    assert [(e.row, e.field, e.value) for e in report.errors] == [(3, "organization", "")]
    assert report.errors[0].reason.startswith("missing")
    assert sorted(contacts("Acme")) == ["1"]
    assert list(Organization.objects.values_list("name", flat=True)) == ["Acme"]


def test_without_an_organization_column_or_option_every_row_is_bad(db):
    report = import_contacts(csv_file("1,Ann,Lee,ann@example.com,TX,,"))
    assert (report.failed, report.errors[0].field) == (1, "organization")
    assert not Organization.objects.exists()


def test_errors_csv_has_one_quoted_line_per_error(db):
    report = import_contacts(
        csv_file('1,Ann,Lee,"ann,@example.com",TX,"1/2/""3",'), organization="Acme"
    )
    assert report.errors_csv() == (
        "row,field,value,reason\r\n"
        '2,email,"ann,@example.com",is not an email address\r\n'
        f'2,birth_date,"1/2/""3",{NOT_A_DATE}\r\n'
    )


def test_errors_past_the_cap_are_counted_but_not_listed(db, monkeypatch):
    monkeypatch.setattr(importer, "MAX_LISTED_ERRORS", 2)
    report = import_contacts(
        csv_file(*(f"{n},Ann,Lee,ann@example.com,ZZ,," for n in range(5))), organization="Acme"
    )
    assert (report.failed, len(report.errors), report.unlisted_errors) == (5, 2, 3)
    assert report.errors_csv().splitlines()[-1] == (
        ",,,... and 3 more errors (a report lists the first 2)"
    )


def test_save_report_records_the_counts_and_the_errors_csv(db):
    user = User.objects.create_user("ivy")
    file = csv_file(
        "1,Ann,Lee,ann@example.com,TX,,,Zenith",
        "2,Bob,Ray,bob@example.com,ZZ,,,Acme",
        "3,Cy,Oh,cy@example.com,TX,,,Acme",
        header=HEADER + ",organization",
    )
    report = import_contacts(file)
    saved = save_report(report, filename="contacts.csv", user=user)
    saved.refresh_from_db()
    assert (saved.filename, saved.organization, saved.created_by) == (
        "contacts.csv",
        "Acme, Zenith",
        user,
    )
    assert (saved.rows, saved.created, saved.updated, saved.failed) == (3, 2, 0, 1)
    assert saved.errors_csv == report.errors_csv()
    assert save_report(report, organization="Acme").organization == "Acme"


# The command --------------------------------------------------------------------------------


@pytest.fixture
def write_csv(tmp_path):
    def write(*rows: str, header: str = HEADER) -> str:
        path = tmp_path / "contacts.csv"
        path.write_text("".join(line + "\n" for line in (header, *rows)), encoding="utf-8")
        return str(path)

    return write


def test_the_command_imports_a_file_records_it_and_prints_a_tally(db, write_csv):
    path = write_csv("1,Ann,Lee,ann@example.com,TX,,", "2,Bob,Ray,bob@example.com,TX,,")
    out = io.StringIO()
    call_command("import_contacts", path, "--organization", "Acme", stdout=out)
    assert out.getvalue() == "✅ 2 rows imported (2 created, 0 updated), 0 bad rows\n"
    assert sorted(contacts("Acme")) == ["1", "2"]
    record = ContactImport.objects.get()
    assert (record.filename, record.organization, record.created) == ("contacts.csv", "Acme", 2)


def test_the_command_lists_bad_rows_writes_the_report_and_exits_1(db, write_csv, tmp_path):
    path = write_csv("1,Ann,Lee,ann@example.com,TX,,", "2,Bob,Ray,bob@example.com,TX,13/45/1990,")
    report_path = tmp_path / "bad.csv"
    out = io.StringIO()
    with pytest.raises(SystemExit) as exc_info:
        call_command(
            "import_contacts",
            path,
            "--organization",
            "Acme",
            "--errors-csv",
            report_path,
            stdout=out,
        )
    assert exc_info.value.code == 1
    assert out.getvalue().splitlines() == [
        f"row 3: birth_date '13/45/1990': {NOT_A_DATE}",
        "⚠️ 1 row imported (1 created, 0 updated), 1 bad row",
    ]
    assert report_path.read_bytes().decode() == (
        f"row,field,value,reason\r\n3,birth_date,13/45/1990,{NOT_A_DATE}\r\n"
    )
    assert sorted(contacts("Acme")) == ["1"]
    assert ContactImport.objects.get().failed == 1


def test_the_command_shows_the_first_50_errors_and_counts_the_rest(db, write_csv):
    path = write_csv(*(f"{n},Ann,Lee,ann@example.com,ZZ,," for n in range(60)))
    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("import_contacts", path, "--organization", "Acme", stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 52
    assert lines[49] == "row 51: state 'ZZ': is not a US state code"
    assert lines[50] == "... and 10 more; full report: --errors-csv FILE"


def test_the_command_refuses_a_bad_header_with_status_2(db, write_csv):
    path = write_csv("1,a@example.com", header="id,email")
    with pytest.raises(CommandError) as exc_info:
        call_command("import_contacts", path, "--organization", "Acme")
    assert exc_info.value.returncode == 2
    assert "missing required columns: first_name, last_name, state" in str(exc_info.value)
    assert not ContactImport.objects.exists()


@pytest.mark.parametrize(
    ("rows", "status", "message", "saved"),
    [
        (["1,Ann,Lee,ann@example.com,TX,,"], 0, "✅ 1 row imported", 1),
        (["1,Ann,Lee,ann@example.com,TX,,", "2,Bob,Ray,bob@example.com,XX,,"], 1, "1 bad row", 1),
        (None, 2, "No such file or directory", 0),
    ],
)
def test_the_command_exit_status_says_whether_any_row_was_bad(
    transactional_db, write_csv, rows, status, message, saved
):
    path = write_csv(*rows) if rows is not None else "/nonexistent/contacts.csv"
    result = subprocess.run(
        [sys.executable, "manage.py", "import_contacts", path, "--organization", "Acme"],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == status, result.stderr
    assert message in result.stdout + result.stderr
    assert Contact.objects.count() == saved


def test_the_report_csv_keeps_spreadsheets_from_running_uploaded_formulas(db):
    report = importer.ImportReport(rows=1, failed=1)
    report.errors.append(importer.RowError(2, "email", '=HYPERLINK("http://x")', "bad"))
    assert "'=HYPERLINK" in report.errors_csv()


def test_the_command_spells_out_terminal_escapes_in_the_values_it_reports(db, write_csv):
    path = write_csv("1\u202e,Ann,Lee,ann@example.com\x1b[2J,T\x1b]0;x\x07,,")
    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("import_contacts", path, "--organization", "Acme", stdout=out)
    text = out.getvalue()
    for bad in ("\x1b", "\x07", "\u202e"):
        assert bad not in text
    assert "email 'ann@example.com\\x1b[2J'" in text
