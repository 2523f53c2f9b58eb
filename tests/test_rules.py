"""The Medicare scheduling rules of specs/medicare-rules.md, rule by rule.

Pure functions: no Django, no database.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from scheduler_app.rules import (
    EMAIL_TYPES,
    ContactData,
    Email,
    RuleError,
    blocked_periods,
    compute_emails,
    is_eligible,
    parse_contact,
    parse_date,
    parse_state,
    preview,
)


def d(text: str) -> date:
    return date.fromisoformat(text)


def emails_of(state, birth, effective, today, position=0):
    """(type, ISO date) pairs for raw contact fields, as a user reads a schedule."""
    today = d(today)
    contact = parse_contact(state, birth, effective, today)
    return [(e.type, e.date.isoformat()) for e in compute_emails(contact, today, position)]


# Worked examples ---------------------------------------------------------------------------------

WORKED_EXAMPLES = [
    # state, birth, effective, today, position, emails
    (
        "TX",
        "1955-05-20",
        "2015-11-01",
        "2025-03-01",
        0,
        [("birthday", "2025-05-06"), ("aep", "2025-08-18"), ("effective_date", "2025-10-02")],
    ),
    (
        "CA",
        "1950-12-15",
        "2010-12-20",
        "2025-01-01",
        0,
        [("post_window", "2025-02-14"), ("aep", "2025-08-18")],
    ),
    (
        "NV",
        "1952-08-17",
        "2012-01-01",
        "2025-06-01",
        0,
        [("post_window", "2025-10-01"), ("effective_date", "2025-12-02")],
    ),
    (
        "MO",
        "1950-01-10",
        "2018-09-01",
        "2025-06-01",
        0,
        [("post_window", "2025-10-05"), ("birthday", "2025-12-27")],
    ),
    (
        "IL",
        "1948-06-15",
        "2000-06-20",
        "2024-01-01",
        0,
        [("post_window", "2024-07-31"), ("aep", "2024-08-18")],
    ),
    (
        "IL",
        "1947-06-15",
        "2000-06-20",
        "2024-01-01",
        0,
        [("effective_date", "2024-05-21"), ("aep", "2024-08-18")],
    ),
    ("NY", "1950-03-03", "2010-03-03", "2025-01-01", 0, []),
    (
        "FL",
        "1952-02-29",
        "2015-07-01",
        "2025-01-01",
        2,
        [("birthday", "2025-02-14"), ("effective_date", "2025-06-01"), ("aep", "2025-09-01")],
    ),
    ("KY", "1951-09-01", "", "2025-01-01", 0, [("post_window", "2025-11-01")]),
    (
        "LA",
        "",
        "2011-02-01",
        "2025-01-01",
        0,
        [("effective_date", "2025-01-02"), ("aep", "2025-08-18")],
    ),
]


@pytest.mark.parametrize(
    ("state", "birth", "effective", "today", "position", "expected"), WORKED_EXAMPLES
)
def test_it_schedules_every_worked_example_of_the_spec(
    state, birth, effective, today, position, expected
):
    assert emails_of(state, birth, effective, today, position) == expected


def test_emails_say_which_rule_produced_them():
    today = d("2025-03-01")
    contact = parse_contact("TX", "1955-05-20", "2015-11-01", today)

    reasons = [e.reason for e in compute_emails(contact, today, 0)]

    assert reasons == [
        "birthday 2025-05-20 - 14 days",
        "AEP week 1 of 2025 (assigned week 1)",
        "effective-date anniversary 2025-11-01 - 30 days",
    ]


def test_a_post_window_email_names_the_blocked_period_it_follows():
    today = d("2025-01-01")
    contact = parse_contact("CA", "1950-12-15", "2010-12-20", today)

    post_window = compute_emails(contact, today, 0)[0]

    assert post_window.reason == "post-window after CA birthday window 2024-09-16..2025-02-13"


# Parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"), [("TX", "TX"), ("tx", "TX"), (" Ca  ", "CA"), ("dc", "DC"), ("PR", "PR")]
)
def test_it_reads_state_codes_case_insensitively_ignoring_spaces(raw, code):
    assert parse_state(raw) == code


@pytest.mark.parametrize("territory", ["DC", "PR", "GU", "VI", "AS", "MP"])
def test_it_accepts_dc_and_the_territories(territory):
    assert parse_state(territory) == territory


@pytest.mark.parametrize("raw", ["ZZ", "Texas", "T X", "XX", "1", "ſc", "tx."])
def test_it_rejects_unknown_states_naming_the_value(raw):
    with pytest.raises(RuleError) as caught:
        parse_state(raw)

    assert caught.value.field == "state"
    assert str(caught.value).startswith("state: ")
    assert repr(raw.strip()) in str(caught.value)


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_a_missing_state_is_an_error(raw):
    with pytest.raises(RuleError, match="^state: missing"):
        parse_state(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1955-05-20", date(1955, 5, 20)),
        ("5/20/1955", date(1955, 5, 20)),
        ("05/20/1955", date(1955, 5, 20)),
        ("5/2/1955", date(1955, 5, 2)),
        ("  1955-05-20 ", date(1955, 5, 20)),
        ("2/29/2024", date(2024, 2, 29)),
    ],
)
def test_it_reads_iso_and_us_dates(raw, expected):
    assert parse_date(raw, "birth_date") == expected


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_a_missing_date_is_none(raw):
    assert parse_date(raw, "birth_date") is None


@pytest.mark.parametrize(
    "raw",
    [
        "13/45/1990",  # impossible month and day
        "2023-02-29",  # not a leap year
        "1955-5-20",  # ISO must be zero-padded
        "20/05/1955",  # day first
        "1955/05/20",
        "5-20-1955",
        "5/20/55",  # two-digit year
        "005/20/1955",
        "0000-01-01",
        "1955-05-20T00:00",
        "yesterday",
        "١٩٥٥-٠٥-٢٠",  # Arabic-Indic digits
    ],
)
@pytest.mark.parametrize("field", ["birth_date", "effective_date"])
def test_it_rejects_malformed_and_impossible_dates_naming_field_and_value(raw, field):
    with pytest.raises(RuleError) as caught:
        parse_date(raw, field)

    assert caught.value.field == field
    assert str(caught.value) == f"{field}: {raw!r} is not a date (use YYYY-MM-DD or M/D/YYYY)"


def test_a_birth_date_after_today_is_an_error():
    with pytest.raises(RuleError) as caught:
        parse_contact("TX", "2025-01-02", None, d("2025-01-01"))

    assert caught.value.field == "birth_date"
    assert str(caught.value) == "birth_date: '2025-01-02' is after today (2025-01-01)"


def test_a_birth_date_of_today_and_a_future_effective_date_are_fine():
    contact = parse_contact("TX", "2025-01-01", "2026-01-01", d("2025-01-01"))

    assert contact == ContactData("TX", d("2025-01-01"), d("2026-01-01"))


def test_parse_contact_also_takes_dates_and_none():
    contact = parse_contact("tx", date(1950, 1, 2), None, d("2025-01-01"))

    assert contact == ContactData("TX", date(1950, 1, 2), None)


def test_rule_errors_are_value_errors():
    assert issubclass(RuleError, ValueError)


# Eligibility and year-round states ---------------------------------------------------------------


@pytest.mark.parametrize("state", ["CT", "MA", "NY", "WA"])
def test_it_skips_year_round_states(state):
    today = d("2025-01-01")
    contact = parse_contact(state, "1950-03-03", "2010-03-03", today)

    assert not is_eligible(contact)
    assert compute_emails(contact, today, 0) == []


def test_other_valid_states_are_eligible():
    assert is_eligible(ContactData("TX", None, None))
    assert is_eligible(ContactData("PR", None, None))


# Horizon and anniversaries -----------------------------------------------------------------------


def test_the_horizon_includes_today_and_excludes_today_plus_365():
    # The anniversary email (2010-03-31 anniversary - 30 days) falls on 2025-03-01 = today,
    # and next on 2026-03-01 = today + 365.
    assert emails_of("TX", None, "2010-03-31", "2025-03-01") == [
        ("effective_date", "2025-03-01"),
        ("aep", "2025-08-18"),
    ]


def test_the_horizon_excludes_yesterday_and_includes_today_plus_364():
    # Emails on 2025-02-28 (yesterday) and 2026-02-28 (today + 364).
    assert emails_of("TX", None, "2010-03-30", "2025-03-01") == [
        ("aep", "2025-08-18"),
        ("effective_date", "2026-02-28"),
    ]


def test_a_feb_29_birthday_is_feb_28_in_non_leap_years():
    assert emails_of("TX", "1952-02-29", None, "2025-01-01") == [
        ("birthday", "2025-02-14"),
        ("aep", "2025-08-18"),
    ]


def test_a_feb_29_birthday_is_feb_29_in_leap_years():
    assert emails_of("TX", "1952-02-29", None, "2024-01-01") == [
        ("birthday", "2024-02-15"),
        ("aep", "2024-08-18"),
    ]


def test_a_feb_29_effective_date_is_feb_28_in_non_leap_years():
    assert emails_of("TX", None, "2016-02-29", "2025-01-01") == [
        ("effective_date", "2025-01-29"),
        ("aep", "2025-08-18"),
    ]


def test_a_leap_year_horizon_is_still_365_days():
    # 2024 has 366 days, so the horizon from Jan 1 ends on Dec 30: a Dec 31 email is out.
    assert emails_of("TX", "1950-01-14", None, "2024-01-01") == [("aep", "2024-08-18")]
    assert emails_of("TX", "1950-01-13", None, "2024-01-01") == [
        ("aep", "2024-08-18"),
        ("birthday", "2024-12-30"),
    ]


def test_the_effective_date_itself_counts_as_an_anniversary():
    assert emails_of("TX", None, "2025-06-01", "2025-01-01") == [
        ("effective_date", "2025-05-02"),
        ("aep", "2025-08-18"),
    ]


def test_an_effective_date_has_no_anniversary_before_its_year():
    # A 2025 anniversary would be emailed on 2025-05-02; the first one, 2026-06-01, is too late.
    assert emails_of("TX", None, "2026-06-01", "2025-01-01") == [("aep", "2025-08-18")]


def test_birthday_anniversaries_start_the_year_after_birth():
    today = d("2025-06-01")
    contact = parse_contact("CA", "2025-01-10", None, today)

    anchors = [
        period.window_start + timedelta(days=30) for period in blocked_periods(contact, today)
    ]

    assert anchors == [d("2026-01-10"), d("2027-01-10")]


def test_missing_dates_only_remove_what_depends_on_them():
    assert emails_of("TX", "", "", "2025-01-01") == [("aep", "2025-08-18")]


# State rule windows ------------------------------------------------------------------------------

BIRTHDAY_WINDOWS = [
    # state, days before the birthday, days after
    ("CA", 30, 60),
    ("ID", 0, 63),
    ("IL", 0, 45),
    ("KY", 0, 60),
    ("LA", 30, 63),
    ("MD", 0, 31),
    ("OK", 0, 60),
    ("OR", 0, 31),
]


@pytest.mark.parametrize(("state", "before", "after"), BIRTHDAY_WINDOWS)
def test_birthday_states_block_their_window_and_the_60_days_before(state, before, after):
    today = d("2025-01-01")
    contact = parse_contact(state, "1955-06-15", None, today)  # young enough for IL

    periods = blocked_periods(contact, today)

    assert [p.window_start for p in periods] == [
        date(year, 6, 15) - timedelta(days=before) for year in range(2024, 2028)
    ]
    assert [p.window_end for p in periods] == [
        date(year, 6, 15) + timedelta(days=after) for year in range(2024, 2028)
    ]
    assert [p.start for p in periods] == [p.window_start - timedelta(days=60) for p in periods]
    assert [p.end for p in periods] == [p.window_end for p in periods]
    assert {(p.state, p.anchor) for p in periods} == {(state, "birthday")}


def test_nevada_anchors_on_the_first_day_of_the_birth_month():
    today = d("2025-01-01")
    contact = parse_contact("NV", "1952-08-17", None, today)

    period = blocked_periods(contact, today)[1]

    assert (period.anchor, period.window_start, period.window_end) == (
        "birth_month",
        d("2025-08-01"),
        d("2025-09-30"),
    )
    assert period.start == d("2025-06-02")


def test_missouri_anchors_on_the_effective_date_anniversary():
    today = d("2025-01-01")
    contact = parse_contact("MO", "1950-06-15", "2018-09-01", today)

    period = blocked_periods(contact, today)[1]

    assert (period.anchor, period.window_start, period.window_end) == (
        "effective_date",
        d("2025-08-02"),
        d("2025-10-04"),
    )
    assert period.label == "MO effective-date window 2025-06-03..2025-10-04"


def test_illinois_blocks_only_birthdays_up_to_age_76():
    today = d("2025-01-01")
    contact = parse_contact("IL", "1949-06-15", None, today)

    # Ages 75 (2024) and 76 (2025) are blocked, 77 (2026) and 78 (2027) are not.
    years = [period.window_start.year for period in blocked_periods(contact, today)]

    assert years == [2024, 2025]


@pytest.mark.parametrize(
    ("state", "birth", "effective"),
    [("CA", "", "2010-12-20"), ("NV", "", "2012-01-01"), ("MO", "1950-01-10", "")],
)
def test_a_window_without_its_anchor_date_blocks_nothing(state, birth, effective):
    today = d("2025-01-01")

    assert blocked_periods(parse_contact(state, birth, effective, today), today) == []


@pytest.mark.parametrize("state", ["TX", "FL", "PR", "NY"])
def test_states_without_a_window_block_nothing(state):
    today = d("2025-01-01")

    assert blocked_periods(parse_contact(state, "1950-06-15", "2010-06-15", today), today) == []


def test_blocked_periods_cover_last_year_to_two_years_ahead():
    today = d("2025-01-01")
    contact = parse_contact("CA", "1950-12-15", None, today)

    labels = [period.label for period in blocked_periods(contact, today)]

    assert labels == [
        "CA birthday window 2024-09-16..2025-02-13",
        "CA birthday window 2025-09-16..2026-02-13",
        "CA birthday window 2026-09-16..2027-02-13",
        "CA birthday window 2027-09-16..2028-02-13",
    ]


def test_a_period_for_a_january_birthday_two_years_ahead_blocks_a_december_run():
    # 2027-01-20 birthday: blocked from 2026-10-22, which suppresses the 2026-11-01 email.
    assert emails_of("CA", "1950-01-20", "2010-12-01", "2025-12-31") == [
        ("post_window", "2026-03-22"),
        ("aep", "2026-08-18"),
    ]
    # The same contact in Texas gets it.
    assert ("effective_date", "2026-11-01") in emails_of(
        "TX", "1950-01-20", "2010-12-01", "2025-12-31"
    )


def test_a_blocked_email_is_suppressed_not_moved():
    # CA blocks 2025-09-16..2026-02-13; the 2025-11-20 effective email is not sent at all.
    emails = emails_of("CA", "1950-12-15", "2010-12-20", "2025-01-01")

    assert [t for t, _ in emails if t == "effective_date"] == []


# AEP ---------------------------------------------------------------------------------------------


def test_aep_weeks_are_assigned_round_robin_by_position():
    today = d("2025-01-01")
    contact = ContactData("TX", None, None)

    dates = [compute_emails(contact, today, position)[0].date for position in range(7)]

    week = {1: d("2025-08-18"), 2: d("2025-08-25"), 3: d("2025-09-01"), 4: d("2025-09-07")}
    assert dates == [week[1], week[2], week[3], week[4], week[1], week[2], week[3]]


def test_a_blocked_assigned_aep_week_falls_back_in_week_order():
    # KY birthday 06-28 blocks 2025-04-29..2025-08-27: weeks 1 and 2 are blocked.
    today = d("2025-01-01")
    contact = parse_contact("KY", "1950-06-28", None, today)

    aep = {
        position: [e for e in compute_emails(contact, today, position) if e.type == "aep"]
        for position in range(4)
    }

    assert aep[0] == [
        Email("aep", d("2025-09-01"), "AEP week 3 of 2025 (fallback: assigned week 1 blocked)")
    ]
    assert aep[1] == [
        Email("aep", d("2025-09-01"), "AEP week 3 of 2025 (fallback: assigned week 2 blocked)")
    ]
    assert aep[2] == [Email("aep", d("2025-09-01"), "AEP week 3 of 2025 (assigned week 3)")]
    assert aep[3] == [Email("aep", d("2025-09-07"), "AEP week 4 of 2025 (assigned week 4)")]


def test_there_is_no_aep_email_when_every_week_is_blocked():
    assert emails_of("KY", "1951-09-01", None, "2025-01-01", position=1) == [
        ("post_window", "2025-11-01")
    ]


def test_aep_weeks_outside_the_horizon_fall_back_and_next_year_counts_too():
    # Horizon 2025-09-05..2026-09-04: only week 4 of 2025, weeks 1-3 of 2026.
    assert emails_of("TX", None, None, "2025-09-05", position=0) == [
        ("aep", "2025-09-07"),
        ("aep", "2026-08-18"),
    ]
    assert emails_of("TX", None, None, "2025-09-05", position=2) == [
        ("aep", "2025-09-07"),
        ("aep", "2026-09-01"),
    ]
    today = d("2025-09-05")
    reasons = [e.reason for e in compute_emails(ContactData("TX", None, None), today, 3)]
    assert reasons == [
        "AEP week 4 of 2025 (assigned week 4)",
        "AEP week 1 of 2026 (fallback: assigned week 4 outside the horizon)",
    ]


# The 60-day birthday rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "birthday_email", "kept"),
    [
        ("1950-07-03", "2025-06-19", True),  # 60 days before AEP 2025-08-18
        ("1950-07-04", "2025-06-20", False),  # 59 days before
        ("1950-10-30", "2025-10-16", False),  # 59 days after
        ("1950-10-31", "2025-10-17", True),  # 60 days after
    ],
)
def test_a_birthday_email_fewer_than_60_days_from_aep_is_dropped(birth, birthday_email, kept):
    emails = emails_of("TX", birth, None, "2025-01-01")

    assert (("birthday", birthday_email) in emails) == kept
    assert ("aep", "2025-08-18") in emails


def test_a_birthday_email_close_to_an_effective_date_email_is_dropped_not_moved():
    # Birthday email 2025-03-01, effective-date email 2025-03-31 (2010-04-30 - 30 days).
    assert emails_of("TX", "1950-03-15", "2010-04-30", "2025-01-01") == [
        ("effective_date", "2025-03-31"),
        ("aep", "2025-08-18"),
    ]


def test_the_60_day_rule_ignores_post_window_emails():
    # MO post-window 2025-10-05 and a birthday email 15 days later are both sent.
    assert emails_of("MO", "1950-11-03", "2018-09-01", "2025-06-01") == [
        ("post_window", "2025-10-05"),
        ("birthday", "2025-10-20"),
    ]


# Post-window and ordering ------------------------------------------------------------------------


def test_a_post_window_email_is_sent_only_inside_the_horizon():
    # CA's 2025-09-16..2026-02-13 period would give 2026-02-14, after the horizon.
    emails = emails_of("CA", "1950-12-15", None, "2025-01-01")

    assert [e for e in emails if e[0] == "post_window"] == [("post_window", "2025-02-14")]


@pytest.mark.parametrize(
    ("birth", "expected"),
    [
        # The 2024 period ends 2024-12-31: post-window today; 2025's would be 2026-01-01.
        ("1950-11-01", [("post_window", "2025-01-01"), ("aep", "2025-08-18")]),
        # The 2024 period ends 2024-12-30: post-window yesterday; 2025's on the horizon's last day.
        ("1950-10-31", [("aep", "2025-08-18"), ("post_window", "2025-12-31")]),
    ],
)
def test_post_window_emails_on_the_horizon_edges(birth, expected):
    assert emails_of("KY", birth, None, "2025-01-01") == expected


def test_emails_on_the_same_day_are_ordered_by_type_name():
    # Effective-date email and AEP week 1 both on 2025-08-18.
    assert emails_of("TX", None, "2010-09-17", "2025-01-01") == [
        ("aep", "2025-08-18"),
        ("effective_date", "2025-08-18"),
    ]
    # Birthday and post-window both on 2025-10-05.
    assert emails_of("MO", "1950-10-19", "2018-09-01", "2025-06-01") == [
        ("birthday", "2025-10-05"),
        ("post_window", "2025-10-05"),
    ]


def test_email_types_are_listed_in_sort_order():
    assert list(EMAIL_TYPES) == sorted(EMAIL_TYPES)


# preview() ---------------------------------------------------------------------------------------


def test_preview_answers_every_row_in_order_and_counts_only_eligible_rows_for_aep():
    rows = [
        {"id": "a", "state": "TX", "birth_date": "", "effective_date": ""},
        {"id": "b", "state": "NY", "birth_date": "", "effective_date": ""},
        {"id": "c", "state": "ZZ", "birth_date": "", "effective_date": ""},
        {"id": "d", "state": "FL", "birth_date": "13/45/1990", "effective_date": ""},
        {"id": "e", "state": "tx", "birth_date": "", "effective_date": ""},
        {"id": "f", "state": "OH", "birth_date": "1955-05-20", "effective_date": "11/1/2015"},
    ]

    results = list(preview(rows, d("2025-03-01")))

    assert results == [
        {"id": "a", "emails": [{"type": "aep", "date": "2025-08-18"}]},
        {"id": "b", "emails": []},
        {"id": "c", "error": "state: 'ZZ' is not a US state code"},
        {
            "id": "d",
            "error": "birth_date: '13/45/1990' is not a date (use YYYY-MM-DD or M/D/YYYY)",
        },
        {"id": "e", "emails": [{"type": "aep", "date": "2025-08-25"}]},
        {
            "id": "f",
            "emails": [
                {"type": "birthday", "date": "2025-05-06"},
                {"type": "aep", "date": "2025-09-01"},
                {"type": "effective_date", "date": "2025-10-02"},
            ],
        },
    ]


def test_preview_treats_absent_columns_as_missing():
    results = list(preview([{"id": "1", "state": "TX"}, {"id": "2"}], d("2025-01-01")))

    assert results == [
        {"id": "1", "emails": [{"type": "aep", "date": "2025-08-18"}]},
        {"id": "2", "error": "state: missing (use a two-letter US state code)"},
    ]


def test_preview_is_lazy():
    def rows():
        yield {"id": "1", "state": "TX"}
        raise AssertionError("read too far")

    assert next(preview(rows(), d("2025-01-01")))["id"] == "1"
