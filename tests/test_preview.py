"""preview_schedule: the spec's worked examples through the command, with no database at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEADER = "id,first_name,last_name,email,state,birth_date,effective_date"
# Nothing listens on port 1: any database access would make the command fail.
NO_DATABASE = "postgres://nobody@127.0.0.1:1/none"


def preview(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DATABASE_URL=NO_DATABASE, SECRET_KEY="preview-test")
    return subprocess.run(
        [sys.executable, "manage.py", "preview_schedule", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def write_csv(tmp_path):
    def write(*rows: str, header: str = HEADER) -> str:
        path = tmp_path / "contacts.csv"
        path.write_text("".join(line + "\n" for line in (header, *rows)), encoding="utf-8")
        return str(path)

    return write


def emails(*pairs: tuple[str, str]) -> dict:
    return {"emails": [{"type": kind, "date": day} for kind, day in pairs]}


# Per run date: CSV rows and the exact result for each. Rows marked "filler" (TX, no dates)
# only take an AEP position, so each worked example sits at the position the spec gives it;
# their AEP week shows the position they took. Invalid and year-round rows take none.
WORKED_EXAMPLES = {
    "2025-03-01": [
        ("TX,1955-05-20,2015-11-01", "TX", emails(
            ("birthday", "2025-05-06"), ("aep", "2025-08-18"), ("effective_date", "2025-10-02")
        )),
    ],
    "2025-01-01": [
        ("CA,1950-12-15,2010-12-20", "CA", emails(
            ("post_window", "2025-02-14"), ("aep", "2025-08-18")
        )),
        ("ZZ,1950-12-15,2010-12-20", "bad-state", {"error": "state: 'ZZ' is not a US state code"}),
        ("KY,1951-09-01,", "KY", emails(("post_window", "2025-11-01"))),  # position 1
        ("NY,1950-03-03,2010-03-03", "NY", emails()),
        ("TX,13/45/1990,", "bad-birth", {
            "error": "birth_date: '13/45/1990' is not a date (use YYYY-MM-DD or M/D/YYYY)"
        }),
        ("TX,2025-01-02,", "future-birth", {
            "error": "birth_date: '2025-01-02' is after today (2025-01-01)"
        }),
        ("", "short", {"error": "row: has 4 values, the header has 7 columns"}),
        # Position 2; lower case and a US date are the same contact.
        ("fl,2/29/1952,2015-07-01", "FL", emails(
            ("birthday", "2025-02-14"), ("effective_date", "2025-06-01"), ("aep", "2025-09-01")
        )),
        ("TX,,", "filler-3", emails(("aep", "2025-09-07"))),
        ("LA,,2011-02-01", "LA", emails(  # position 4: week 1 again
            ("effective_date", "2025-01-02"), ("aep", "2025-08-18")
        )),
    ],
    "2025-06-01": [
        ("NV,1952-08-17,2012-01-01", "NV", emails(
            ("post_window", "2025-10-01"), ("effective_date", "2025-12-02")
        )),
        ("MO,1950-01-10,2018-09-01", "MO", emails(
            ("post_window", "2025-10-05"), ("birthday", "2025-12-27")
        )),
    ],
    "2024-01-01": [
        ("IL,1948-06-15,2000-06-20", "IL-76", emails(
            ("post_window", "2024-07-31"), ("aep", "2024-08-18")
        )),
        ("TX,,", "filler-1", emails(("aep", "2024-08-25"))),
        ("TX,,", "filler-2", emails(("aep", "2024-09-01"))),
        ("TX,,", "filler-3", emails(("aep", "2024-09-07"))),
        ("IL,1947-06-15,2000-06-20", "IL-77", emails(  # position 4: week 1 again
            ("effective_date", "2024-05-21"), ("aep", "2024-08-18")
        )),
    ],
}  # fmt: skip


def example_csv(write_csv, today: str) -> tuple[str, list[dict]]:
    rows, expected = [], []
    for values, row_id, result in WORKED_EXAMPLES[today]:
        rows.append(f"{row_id},Ann,Lee,ann@example.com,{values}" if values else f"{row_id},A,B,C")
        expected.append({"id": row_id, **result})
    return write_csv(*rows), expected


@pytest.mark.parametrize("today", sorted(WORKED_EXAMPLES))
def test_it_prints_the_worked_examples_of_the_spec_as_exact_json(write_csv, today):
    path, expected = example_csv(write_csv, today)
    result = preview("--csv", path, "--today", today, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == json.dumps(expected) + "\n"


def test_json_is_the_default_format(write_csv):
    path, expected = example_csv(write_csv, "2025-03-01")
    result = preview("--csv", path, "--today", "2025-03-01")
    assert json.loads(result.stdout) == expected


def test_it_reads_the_import_format_with_optional_and_unknown_columns(write_csv):
    path = write_csv(
        "Zenith,555-0100, TX-1 ,Ann,Lee,ann@example.com, tx ,5/20/1955,2015-11-01,78701,note",
        header="organization,phone,ID,first_name,last_name,email,State,birth_date,effective_date,"
        "zip,notes",
    )
    result = preview("--csv", path, "--today", "2025-03-01")
    assert json.loads(result.stdout) == [
        {"id": "TX-1", **WORKED_EXAMPLES["2025-03-01"][0][2]},
    ]


def test_the_table_format_prints_one_readable_line_per_row(write_csv):
    path, _ = example_csv(write_csv, "2025-01-01")
    result = preview("--csv", path, "--today", "2025-01-01", "--format", "table")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(WORKED_EXAMPLES["2025-01-01"])
    assert lines[0] == "CA           2025-02-14 post_window  2025-08-18 aep"
    assert lines[1] == "bad-state    ERROR state: 'ZZ' is not a US state code"
    assert lines[3] == "NY           no emails"
    assert lines[7] == "FL           2025-02-14 birthday  2025-06-01 effective_date  2025-09-01 aep"


@pytest.mark.parametrize(
    ("header", "args", "message"),
    [
        ("id,state,birth_date", [], "missing required columns: first_name, last_name, email"),
        (HEADER, ["--today", "2025-3-1"], "--today takes a date as YYYY-MM-DD, not '2025-3-1'"),
        (HEADER, ["--csv", "/nonexistent.csv"], "/nonexistent.csv: No such file or directory"),
        (HEADER, ["--today", "9999-12-31"], "--today: the run date 9999-12-31 is outside"),
        (HEADER, ["--today", "0001-01-01"], "--today: the run date 0001-01-01 is outside"),
    ],
)
def test_a_bad_header_date_or_file_exits_2_with_a_message_and_prints_nothing(
    write_csv, header, args, message
):
    path = write_csv("1,TX,1950-01-01", header=header)
    result = preview("--csv", path, "--today", "2025-01-01", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_the_table_spells_out_terminal_escapes_and_bidi_overrides_from_the_file(write_csv):
    path = write_csv(
        "\x1b[31mred\u202e,A,B,a@example.com,T\x1bX,1950-01-01,",
        "\x1b]0;title\x07,A,B,b@example.com,TX,1950-01-01,2020-01-01",
    )

    result = preview("--csv", path, "--today", "2025-01-01", "--format", "table")

    assert result.returncode == 0, result.stderr
    for bad in ("\x1b", "\x07", "\u202e"):
        assert bad not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("\\x1b[31mred\\u202e ")
    assert lines[1].startswith("\\x1b]0;title\\x07 ")
