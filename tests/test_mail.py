"""project.mail.EmailMessage builds, byte for byte, the message Django's EmailMessage builds."""

from __future__ import annotations

import email.policy
import random

import pytest
from django.core import mail

from project.mail import EmailMessage, OnceHeaderRegistry, with_once_headers

FIXED = {"Date": "Mon, 30 Nov 2026 09:00:00 -0000", "Message-ID": "<brief-1@batchboard.test>"}


def build(cls, policy, attachment: bool, **kwargs) -> bytes:
    message = cls(headers=FIXED, **kwargs)
    if attachment:
        message.attach("invite.ics", b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", "text/calendar")
    random.seed(7)  # the MIME boundary
    return message.message(policy=policy).as_bytes()


@pytest.mark.parametrize("policy", [email.policy.default, email.policy.SMTP])
@pytest.mark.parametrize(
    "kwargs, attachment",
    [
        ({"subject": "Your daily brief", "body": "Hello\n", "to": ["dana@example.com"]}, False),
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
    ],
)
def test_messages_are_the_ones_django_builds(policy, kwargs, attachment):
    ours = build(EmailMessage, policy, attachment, **kwargs)
    assert ours == build(mail.EmailMessage, policy, attachment, **kwargs)


def test_each_header_class_is_made_once_and_other_registries_are_kept():
    registry = OnceHeaderRegistry()
    assert registry["Subject"] is registry["subject"]
    assert registry["To"] is not registry["Subject"]
    policy = with_once_headers(email.policy.SMTP)
    assert type(policy.header_factory) is OnceHeaderRegistry
    assert policy.linesep == "\r\n"  # the rest of SMTP's policy is kept
    assert with_once_headers(email.policy.SMTP) is policy
    custom = email.policy.default.clone(header_factory=OnceHeaderRegistry())
    assert with_once_headers(custom) is custom
