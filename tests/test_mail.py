"""project.mail.EmailMessage builds, byte for byte, the message Django's EmailMessage builds."""

from __future__ import annotations

import email.policy
import random
from datetime import UTC, datetime
from email.headerregistry import HeaderRegistry
from zoneinfo import ZoneInfo

import pytest
from django.core import mail
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from project.mail import (
    EmailMessage,
    PlainHeader,
    PlainHeaderRegistry,
    with_plain_headers,
)

FIXED = {"Date": "Mon, 30 Nov 2026 09:00:00 -0000", "Message-ID": "<brief-1@batchboard.test>"}
POLICIES = [email.policy.default, email.policy.SMTP]


def build(cls, policy, attachment: bool, **kwargs) -> bytes:
    message = cls(**{"headers": FIXED} | kwargs)
    if attachment:
        message.attach("invite.ics", b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", "text/calendar")
    random.seed(7)  # the MIME boundary
    return message.message(policy=policy).as_bytes()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    "kwargs, attachment",
    [
        ({"subject": "Your daily brief", "body": "Hello\n", "to": ["dana@example.com"]}, False),
        (
            {
                "subject": "Your weekly brief for Monday, November 30",
                "body": "Emails scheduled for the next 7 days: " + "14 (birthday 2) " * 10 + "\n",
                "to": ["dana@example.com", "lee.o'neil+briefs@mail.example.org"],
                "cc": ["ops@example.com"],
            },
            False,
        ),
        (
            {
                "subject": "Résumé de la semaine: " + "très long sujet " * 8,
                "body": "Grüße, Zoë\n" * 40,
                "from_email": "Batchboard <briefs@example.com>",
                "to": ['"Whitfield, Dana" <dana@example.com>', "Zoë <zoe@exämple.com>"],
                "reply_to": ["organizer@example.com"],
            },
            True,
        ),
        (
            {
                "subject": "A subject long enough that the standard folding has to split it "
                "over two lines",
                "body": "=?utf-8?q?not_a_header?=\n",
                "to": ["a@example.com"],
                "headers": FIXED | {"X-Note": "=?utf-8?q?caf=C3=A9?="},
            },
            False,
        ),
    ],
)
def test_messages_are_the_ones_django_builds(policy, kwargs, attachment):
    ours = build(EmailMessage, policy, attachment, **kwargs)
    assert ours == build(mail.EmailMessage, policy, attachment, **kwargs)


WORD = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
ATOM = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,8}", fullmatch=True)
DOMAIN = st.from_regex(r"[A-Za-z0-9-]{1,8}(\.[A-Za-z0-9-]{1,8}){0,2}", fullmatch=True)
ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", ATOM, DOMAIN)
VALUES = {
    "Subject": st.lists(WORD, min_size=1, max_size=14).map(" ".join),
    "X-Brief": st.lists(WORD, min_size=1, max_size=4).map(" ".join),
    "To": st.lists(ADDRESS, min_size=1, max_size=4).map(", ".join),
    "From": ADDRESS,
    "Reply-To": ADDRESS,
    "Message-ID": ADDRESS.map(lambda a: f"<{a}>"),
    "MIME-Version": st.just("1.0"),
    "Content-Transfer-Encoding": st.sampled_from(["7bit", "8bit", "quoted-printable", "base64"]),
    "Content-Type": st.sampled_from(["text/plain", 'text/plain; charset="utf-8"']),
}


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(VALUES)).flatmap(lambda n: st.tuples(st.just(n), VALUES[n])))
def test_a_plain_value_is_written_as_the_standard_registry_writes_it(header):
    name, value = header
    standard = HeaderRegistry()(name, value)
    ours = PlainHeaderRegistry()(name, value)
    for policy in POLICIES:
        assert ours.fold(policy=policy) == standard.fold(policy=policy)
    assert str(ours) == str(standard)


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from([UTC, ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")]),
    )
)
def test_a_date_is_written_and_read_as_the_standard_registry_does(when):
    standard = HeaderRegistry()("Date", when)
    ours = PlainHeaderRegistry()("Date", when)
    assert isinstance(ours, PlainHeader)
    for policy in POLICIES:
        assert ours.fold(policy=policy) == standard.fold(policy=policy)
    assert ours.datetime == standard.datetime == when


def test_only_plain_values_are_kept_as_they_are():
    registry = PlainHeaderRegistry()
    assert isinstance(registry("Subject", "Your daily brief"), PlainHeader)
    assert isinstance(registry("To", "dana@example.com, lee@example.com"), PlainHeader)
    for name, value in [
        ("Subject", "Résumé"),
        ("Subject", "two  spaces"),
        ("Subject", "=?utf-8?q?caf=C3=A9?="),
        ("To", "Dana <dana@example.com>"),
        ("To", "zoe@exämple.com"),
        ("Content-Type", "text/calendar"),
    ]:
        assert not isinstance(registry(name, value), PlainHeader), value
    assert registry("Subject", "x").parsed_class is registry["subject"]


def test_a_plain_header_parses_itself_when_its_parts_are_asked_for():
    to = PlainHeaderRegistry()("To", "dana@example.com, lee@example.com")
    assert [a.username for a in to.addresses] == ["dana", "lee"]
    content_type = PlainHeaderRegistry()("Content-Type", 'text/plain; charset="utf-8"')
    assert content_type.params == {"charset": "utf-8"}
    message = EmailMessage("Hello", "Hi\n", to=["dana@example.com"]).message()
    assert message["To"].addresses[0].domain == "example.com"
    assert message.get_content_charset() == "utf-8"


def test_header_injection_is_still_refused():
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        EmailMessage("Hello\nBcc: all@example.com", "Hi\n", to=["dana@example.com"]).message()


def test_each_header_class_is_made_once_and_other_registries_are_kept():
    registry = PlainHeaderRegistry()
    assert registry["Subject"] is registry["subject"]
    assert registry["To"] is not registry["Subject"]
    policy = with_plain_headers(email.policy.SMTP)
    assert type(policy.header_factory) is PlainHeaderRegistry
    assert policy.linesep == "\r\n"  # the rest of SMTP's policy is kept
    assert with_plain_headers(email.policy.SMTP) is policy
    custom = email.policy.default.clone(header_factory=PlainHeaderRegistry())
    assert with_plain_headers(custom) is custom
