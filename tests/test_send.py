"""The send_due_emails job kind: each due email is sent once, and ends with its status recorded.

A tiny SMTP server on 127.0.0.1 stands in for the mail relay (the stdlib has no smtpd since
3.12): it records what it receives, refuses `bounce*` recipients with a 550, and answers the
first attempt for `busy*` recipients with a 451.
"""

from __future__ import annotations

import socketserver
import threading
from collections import Counter
from datetime import date, timedelta
from email import message_from_bytes, policy

import pytest
from django.core import mail
from django.utils import timezone

from project import engine
from project.kinds import Item, PermanentError, TransientError, get_kind
from project.models import Job, JobItem
from scheduler_app.models import Contact, Organization, ScheduledEmail
from tests.helpers import wait_for_job

TODAY = date(2025, 3, 1)


class SMTPSink(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), SMTPHandler)
        self.lock = threading.Lock()
        self.messages: list[tuple[list[str], bytes]] = []
        self.deferred: set[str] = set()  # busy recipients already answered with a 451

    @property
    def port(self) -> int:
        return self.server_address[1]

    def recipients(self) -> Counter:
        with self.lock:
            return Counter(to for rcpts, _ in self.messages for to in rcpts)


class SMTPHandler(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        sink: SMTPSink = self.server
        self.reply("220 sink ESMTP")
        rcpts: list[str] = []
        while line := self.rfile.readline():
            command = line.decode().strip()
            verb = command[:4].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 sink")
            elif verb == "MAIL":
                rcpts = []
                self.reply("250 OK")
            elif verb == "RCPT":
                address = command.partition(":")[2].strip().strip("<>")
                with sink.lock:
                    first_try = address not in sink.deferred
                    if address.startswith("busy"):
                        sink.deferred.add(address)
                if address.startswith("bounce"):
                    self.reply("550 5.1.1 mailbox unavailable")
                elif address.startswith("busy") and first_try:
                    self.reply("451 4.3.0 try again later")
                else:
                    rcpts.append(address)
                    self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with .")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk
                with sink.lock:
                    sink.messages.append((rcpts, data))
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:  # RSET, NOOP
                self.reply("250 OK")


@pytest.fixture
def smtp_sink():
    sink = SMTPSink()
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    yield sink
    sink.shutdown()
    sink.server_close()


@pytest.fixture
def smtp_mailer(settings, smtp_sink):
    """This process sends through the sink, as the workers do when EMAIL_HOST is set."""
    settings.MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {
                "host": "127.0.0.1",
                "port": smtp_sink.port,
                "use_tls": False,
                "timeout": 5,
            },
        }
    }
    return smtp_sink


def sink_env(sink: SMTPSink) -> dict:
    return {
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": sink.port,
        "EMAIL_USE_TLS": "0",
        "SMTP_RPM": 60_000,
    }


def due_email(address: str, first_name: str = "Ann", **fields) -> ScheduledEmail:
    org, _ = Organization.objects.get_or_create(name="Sunrise Benefits")
    contact = Contact.objects.create(
        organization=org,
        external_id=address,
        first_name=first_name,
        last_name="Lee",
        email=address,
        state="TX",
    )
    fields = {"type": "birthday", "send_date": TODAY, **fields}
    return ScheduledEmail.objects.create(contact=contact, **fields)


def send_job(**params) -> Job:
    return engine.launch("send_due_emails", {"on_or_before": TODAY, **params})


def run_item(job: Job, email: ScheduledEmail, attempt: int = 1):
    return get_kind("send_due_emails").run_item(job, Item(0, str(email.pk), attempt))


def test_due_pending_emails_are_sent_once_personalized_by_template(db, redis_db):
    due = due_email("ann@example.com", first_name="Ann")
    later = due_email("bob@example.com", send_date=TODAY + timedelta(days=1))
    due_email("cid@example.com", status="sent")  # already sent: not an item
    job = send_job()

    first = run_item(job, due)
    again = run_item(job, due)

    assert list(JobItem.objects.filter(job=job).values_list("key", flat=True)) == [str(due.pk)]
    assert [m.to for m in mail.outbox] == [["ann@example.com"]]
    message = mail.outbox[0]
    assert message.subject == "Happy early birthday, Ann! A quick Medicare check-in"
    assert message.body.startswith("Hi Ann,") and "Sunrise Benefits" in message.body
    due.refresh_from_db()
    assert due.status == "sent" and due.sent_at is not None
    assert (first.status, again.status) == ("succeeded", "skipped")
    assert again.summary == "already claimed or no longer pending"
    assert ScheduledEmail.objects.get(pk=later.pk).status == "pending"


@pytest.mark.parametrize("kind", ["aep", "birthday", "effective_date", "post_window"])
def test_every_email_type_has_a_one_line_subject_that_cannot_inject_headers(db, redis_db, kind):
    email = due_email("ann@example.com", first_name="Ann\nBcc: eve@example.com", type=kind)

    run_item(send_job(), email)

    message = mail.outbox[0]
    assert "\n" not in message.subject
    assert message.bcc == [] and message.to == ["ann@example.com"]
    assert message.body.startswith("Hi Ann")


def test_a_contact_without_an_address_is_skipped_and_recorded(db, redis_db):
    email = due_email("")

    outcome = run_item(send_job(), email)

    email.refresh_from_db()
    assert outcome.status == "skipped"
    assert (email.status, email.error) == ("skipped", "contact has no email address")
    assert mail.outbox == []


def test_a_5xx_refusal_marks_the_email_failed_with_the_error(db, redis_db, smtp_mailer):
    email = due_email("bounce@example.com")

    with pytest.raises(PermanentError) as exc:
        run_item(send_job(), email)

    email.refresh_from_db()
    assert email.status == "failed"
    assert "550" in email.error and "mailbox unavailable" in email.error
    assert "550" in str(exc.value)
    assert smtp_mailer.messages == []


def test_a_4xx_refusal_releases_the_claim_so_the_retry_sends_it(db, redis_db, smtp_mailer):
    email = due_email("busy@example.com")
    job = send_job()

    with pytest.raises(TransientError):
        run_item(job, email)
    email.refresh_from_db()
    assert (email.status, email.claimed_at) == ("pending", None)
    assert "451" in email.error
    outcome = run_item(job, email, attempt=2)

    email.refresh_from_db()
    assert (outcome.status, email.status) == ("succeeded", "sent")
    assert smtp_mailer.recipients() == Counter({"busy@example.com": 1})


def test_an_unreachable_relay_is_transient(db, redis_db, settings):
    settings.MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {"host": "127.0.0.1", "port": 1, "use_tls": False, "timeout": 2},
        }
    }
    email = due_email("ann@example.com")

    with pytest.raises(TransientError):
        run_item(send_job(), email)

    email.refresh_from_db()
    assert (email.status, email.claimed_at) == ("pending", None)


def test_two_send_jobs_at_once_send_each_email_exactly_once(workers, smtp_sink):
    workers(2, **sink_env(smtp_sink))
    addresses = [f"person{n}@example.com" for n in range(60)]
    for address in addresses:
        due_email(address)

    first, second = send_job(), send_job()
    first, second = wait_for_job(first), wait_for_job(second)

    assert smtp_sink.recipients() == Counter(dict.fromkeys(addresses, 1))
    assert first.succeeded + second.succeeded == 60
    assert first.skipped + second.skipped == 60
    assert set(ScheduledEmail.objects.values_list("status", flat=True)) == {"sent"}


def test_workers_retry_a_4xx_and_fail_a_5xx_recording_each_status(workers, smtp_sink):
    workers(2, **sink_env(smtp_sink))
    _, busy, bounce = (due_email(f"{n}@example.com") for n in ("ok", "busy", "bounce"))

    job = wait_for_job(send_job())

    statuses = dict(ScheduledEmail.objects.values_list("contact__email", "status"))
    assert statuses == {
        "ok@example.com": "sent",
        "busy@example.com": "sent",
        "bounce@example.com": "failed",
    }
    assert smtp_sink.recipients() == Counter({"ok@example.com": 1, "busy@example.com": 1})
    items = {i.key: i for i in JobItem.objects.filter(job=job)}
    assert items[str(busy.pk)].attempts == 2
    assert (items[str(bounce.pk)].status, items[str(bounce.pk)].attempts) == ("failed", 1)
    assert "550" in items[str(bounce.pk)].error_message
    assert (job.succeeded, job.failed, job.tallies["sent"]) == (2, 1, 2)


def test_an_organization_send_covers_only_its_emails(db):
    mine = due_email("ann@example.com")
    other = Organization.objects.create(name="Other")
    theirs = ScheduledEmail.objects.create(
        contact=Contact.objects.create(organization=other, external_id="x", email="x@example.com"),
        type="aep",
        send_date=TODAY,
    )

    job = send_job(organization="Sunrise Benefits")

    keys = set(JobItem.objects.filter(job=job).values_list("key", flat=True))
    assert keys == {str(mine.pk)} and str(theirs.pk) not in keys


def test_sent_messages_are_well_formed_mime(db, redis_db, smtp_mailer):
    run_item(send_job(), due_email("ann@example.com", type="aep"))

    [(rcpts, data)] = smtp_mailer.messages
    message = message_from_bytes(data, policy=policy.default)
    assert rcpts == ["ann@example.com"]
    assert message["Subject"] == "Medicare Annual Enrollment starts October 15, Ann"
    assert message["To"] == "ann@example.com"


def test_a_claim_whose_sender_died_is_taken_over_after_the_lease(db, redis_db, settings):
    settings.BATCH_LEASE_SECONDS = 30
    email = due_email("ann@example.com")
    job = send_job()
    # A sender claimed it 10 s ago and is still (as far as anyone knows) sending it.
    ScheduledEmail.objects.filter(pk=email.pk).update(
        claimed_at=timezone.now() - timedelta(seconds=10)
    )
    assert run_item(job, email).status == "skipped"
    assert mail.outbox == []
    # 31 s ago: the lease lapsed, so that sender died before recording anything.
    ScheduledEmail.objects.filter(pk=email.pk).update(
        claimed_at=timezone.now() - timedelta(seconds=31)
    )
    assert ScheduledEmail.objects.due(TODAY).filter(pk=email.pk).exists()
    assert run_item(job, email, attempt=2).status == "succeeded"
    assert [m.to for m in mail.outbox] == [["ann@example.com"]]
    assert ScheduledEmail.objects.get(pk=email.pk).status == "sent"
