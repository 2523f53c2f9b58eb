"""Reading mailboxes: threading by Message-ID, the three file forms, bodies, broken messages."""

from __future__ import annotations

import mailbox
import zipfile
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from scanner import demo, rules
from scanner.mailbox import count_messages, html_to_text, read_threads
from tests import mailgen

START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def mail(
    message_id: str | None,
    minutes: int = 0,
    reply_to: list[str] | None = None,
    body: str = "Hello",
    subject: str = "Order 8812",
    sender: str = "Dana Whitfield <Dana@Acme-Fasteners.com>",
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "Jordan Reyes <jreyes@lakeside-medical.com>"
    message["Subject"] = subject
    message["Date"] = format_datetime(START + timedelta(minutes=minutes))
    if message_id:
        message["Message-ID"] = f"<{message_id}>"
    if reply_to:
        message["In-Reply-To"] = f"<{reply_to[-1]}>"
        message["References"] = " ".join(f"<{r}>" for r in reply_to)
    message.set_content(body)
    return message


def write_mbox(path, messages) -> str:
    box = mailbox.mbox(path)
    for message in messages:
        box.add(message if isinstance(message, EmailMessage) else message)
    box.flush()
    box.close()
    return str(path)


def shape(threads) -> list[tuple[str, list[str]]]:
    return [(t.root_id, [m.message_id for m in t.messages]) for t in threads]


def test_replies_join_their_thread_oldest_first_and_threads_come_by_first_date(tmp_path):
    path = write_mbox(
        tmp_path / "inbox.mbox",
        [
            mail("b-root@x", minutes=10, subject="Second"),
            mail("a-reply@x", minutes=30, reply_to=["a-root@x"], subject="Re: First"),
            mail("a-root@x", minutes=0, subject="First"),
            mail("b-reply@x", minutes=40, reply_to=["b-root@x"]),
            mail("a-reply2@x", minutes=50, reply_to=["a-root@x", "a-reply@x"]),
        ],
    )
    threads = list(read_threads(path))
    assert shape(threads) == [
        ("a-root@x", ["a-root@x", "a-reply@x", "a-reply2@x"]),
        ("b-root@x", ["b-root@x", "b-reply@x"]),
    ]
    first = threads[0]
    assert first.subject == "First"
    assert first.last_message_at == START + timedelta(minutes=50)
    assert first.participants == ["dana@acme-fasteners.com", "jreyes@lakeside-medical.com"]
    assert first.messages[0].sender_name == "Dana Whitfield"
    assert first.messages[1].in_reply_to == "a-root@x"
    assert first.messages[2].references == ["a-root@x", "a-reply@x"]


def test_replies_to_a_message_missing_from_the_mailbox_still_share_a_thread(tmp_path):
    path = write_mbox(
        tmp_path / "inbox.mbox",
        [
            # the root (gone@x) was deleted; one reply names it only in References
            mail("r1@x", minutes=5, reply_to=["gone@x"]),
            mail("r2@x", minutes=9, reply_to=["gone@x", "other-missing@x"]),
        ],
    )
    assert shape(read_threads(path)) == [("r1@x", ["r1@x", "r2@x"])]


def test_folded_lowercase_and_repeated_threading_headers_are_read_as_mail_clients_do(tmp_path):
    # Written by hand: a long References folded over three lines, header names in lower case,
    # and a second Message-ID (the first one counts).
    raw = (
        b"From MAILER-DAEMON Mon Mar  3 09:00:00 2025\n"
        b"message-id: <root@x>\nDate: Mon, 03 Mar 2025 09:00:00 +0000\n"
        b"Subject: First\n\nHello\n\n"
        b"From MAILER-DAEMON Mon Mar  3 09:10:00 2025\n"
        b"Message-ID: <reply@x>\nMESSAGE-ID: <ignored@x>\n"
        b"date:\n Mon, 03 Mar 2025\n 09:10:00 +0000\n"
        b"References: <root@x>\n\t<middle@x>\n   <last@x>\n"
        b"Subject: Re: First\n\nThanks\n"
    )
    path = tmp_path / "inbox.mbox"
    path.write_bytes(raw)
    (thread,) = read_threads(path)
    assert shape([thread]) == [("root@x", ["root@x", "reply@x"])]
    assert thread.messages[1].references == ["root@x", "middle@x", "last@x"]
    assert thread.messages[1].sent_at == START + timedelta(minutes=10)


def test_ties_on_the_first_date_are_ordered_by_root_id(tmp_path):
    path = write_mbox(tmp_path / "inbox.mbox", [mail("zz@x"), mail("aa@x"), mail("mm@x")])
    assert [t.root_id for t in read_threads(path)] == ["aa@x", "mm@x", "zz@x"]


def test_a_message_without_an_id_gets_the_same_id_on_every_read(tmp_path):
    path = write_mbox(tmp_path / "inbox.mbox", [mail(None), mail("kept@x", minutes=1)])
    first = [t.root_id for t in read_threads(path)]
    assert first == [t.root_id for t in read_threads(path)]
    assert first[0].endswith("@mailbox.invalid") and first[1] == "kept@x"


def test_an_exact_copy_is_read_once_and_a_clashing_id_keeps_both_messages(tmp_path):
    copy = mail("same@x", body="First")
    path = write_mbox(
        tmp_path / "inbox.mbox",
        [copy, copy, mail("same@x", minutes=3, body="Another message, same id")],
    )
    threads = list(read_threads(path))
    texts = sorted(m.text for t in threads for m in t.messages)
    assert texts == ["Another message, same id", "First"]


def test_dates_are_aware_utc_and_a_missing_date_sorts_last(tmp_path):
    undated = mail("undated@x")
    del undated["Date"]
    other_zone = mail("paris@x")
    other_zone.replace_header("Date", "Mon, 03 Mar 2025 11:00:00 +0100")
    path = write_mbox(tmp_path / "inbox.mbox", [undated, other_zone])
    threads = list(read_threads(path))
    assert [t.root_id for t in threads] == ["paris@x", "undated@x"]
    assert threads[0].messages[0].sent_at == datetime(2025, 3, 3, 10, 0, tzinfo=UTC)
    assert threads[1].messages[0].sent_at is None and threads[1].last_message_at is None


def test_bodies_html_only_alternative_forwarded_and_attachments(tmp_path):
    html_only = mail("html@x")
    html_only.set_content(
        "<html><head><style>p{color:red}</style></head><body><p>Shipped &amp; on its way</p>"
        "<table><tr><th>Carrier</th><th>Tracking #</th></tr>"
        "<tr><td>UPS</td><td>1Z999AA10123456784</td></tr></table></body></html>",
        subtype="html",
    )
    alternative = mail("alt@x", minutes=1, body="Plain version")
    alternative.add_alternative("<p>HTML version</p>", subtype="html")
    with_attachment = mail("att@x", minutes=2, body="See attached invoice.")
    with_attachment.add_attachment(b"%PDF-1.4 binary", maintype="application", subtype="pdf")
    forwarded = mail("fwd@x", minutes=3, body="FYI, see below.")
    forwarded.add_attachment(mail("inner@x", body="Tracking 1Z999AA10123456784"))
    path = write_mbox(tmp_path / "inbox.mbox", [html_only, alternative, with_attachment, forwarded])
    texts = {t.root_id: t.messages[0].text for t in read_threads(path)}
    assert (
        texts["html@x"] == "Shipped & on its way\n\nCarrier | Tracking #\nUPS | 1Z999AA10123456784"
    )
    assert texts["alt@x"] == "Plain version"
    assert texts["att@x"] == "See attached invoice."
    assert "FYI, see below." in texts["fwd@x"]
    assert "Tracking 1Z999AA10123456784" in texts["fwd@x"]


def test_a_broken_message_never_loses_the_others(tmp_path):
    bad_charset = mail("charset@x", minutes=1)
    bad_charset.set_payload("Caf\xe9 shipped".encode("latin-1"))
    bad_charset.replace_header("Content-Type", "text/plain; charset=no-such-charset")
    bad_base64 = mail("base64@x", minutes=2)
    bad_base64.set_payload("!!!not base64!!!")
    bad_base64.replace_header("Content-Transfer-Encoding", "base64")
    path = tmp_path / "inbox.mbox"
    write_mbox(path, [mail("first@x"), bad_charset, bad_base64, mail("last@x", minutes=9)])
    with open(path, "ab") as file:  # a truncated message with garbage headers at the end
        file.write(b"\nFrom MAILER-DAEMON Mon Mar  3 09:00:00 2025\nDate: not a date\nFrom: <<<\n")
    threads = {t.root_id: t for t in read_threads(path)}
    assert {"first@x", "charset@x", "base64@x", "last@x"} <= set(threads)
    assert len(threads) == 5
    assert threads["charset@x"].messages[0].text.startswith("Caf")
    assert threads["last@x"].messages[0].text == "Hello"


def test_an_eml_folder_and_a_zip_read_like_the_mbox(tmp_path):
    labels = mailgen.write_mbox(tmp_path / "inbox.mbox", conversations=40, seed=5)
    mailgen.write_eml_dir(tmp_path / "eml", conversations=40, seed=5)
    mailgen.write_zip(tmp_path / "inbox.zip", conversations=40, seed=5)
    from_mbox = shape(read_threads(tmp_path / "inbox.mbox"))
    assert from_mbox == shape(read_threads(tmp_path / "eml"))
    assert from_mbox == shape(read_threads(tmp_path / "inbox.zip"))
    assert sorted(root for root, _ in from_mbox) == sorted(labels)
    assert count_messages(tmp_path / "inbox.zip") == sum(len(ids) for _, ids in from_mbox)


def test_a_zip_skips_folders_resource_forks_and_other_files(tmp_path):
    with zipfile.ZipFile(tmp_path / "inbox.zip", "w") as archive:
        archive.writestr("inbox/a.eml", mail("a@x").as_bytes())
        archive.writestr("__MACOSX/inbox/._a.eml", b"\x00\x05\x16\x07")
        archive.writestr("inbox/notes.txt", b"not mail")
    assert [t.root_id for t in read_threads(tmp_path / "inbox.zip")] == ["a@x"]


def test_bodies_are_read_when_their_thread_is_reached_not_before(tmp_path):
    folder = tmp_path / "eml"
    folder.mkdir()
    (folder / "1.eml").write_bytes(mail("one@x").as_bytes())
    (folder / "2.eml").write_bytes(mail("two@x", minutes=5, body="Old body").as_bytes())
    threads = read_threads(folder)
    assert next(threads).root_id == "one@x"
    (folder / "2.eml").write_bytes(mail("two@x", minutes=5, body="New body").as_bytes())
    assert next(threads).messages[0].text == "New body"


def test_html_reduced_to_text_keeps_rows_and_paragraphs_apart():
    html = "<div>Hi<br>team</div><p>Line\none</p><script>x()</script><ul><li>a</li><li>b</li></ul>"
    assert html_to_text(html) == "Hi\nteam\n\nLine one\n\na\nb"


@given(st.lists(st.integers(min_value=-1, max_value=30), min_size=1, max_size=25))
@settings(max_examples=40, deadline=None)
def test_threads_are_exactly_the_reply_trees(tmp_path_factory, parents):
    """Any forest of replies (message i answers an earlier one, or none) reads back as its trees."""
    ids = [f"m{i:02d}@x" for i in range(len(parents))]
    chains: list[list[str]] = []
    messages = []
    for i, parent in enumerate(parents):
        parent = parent if 0 <= parent < i else -1
        chain = [*chains[parent], ids[parent]] if parent >= 0 else []
        chains.append(chain)
        messages.append(mail(ids[i], minutes=i, reply_to=chain or None))
    path = write_mbox(tmp_path_factory.mktemp("forest") / "inbox.mbox", messages)
    expected = {}
    for i, chain in enumerate(chains):
        expected.setdefault(chain[0] if chain else ids[i], []).append(ids[i])
    assert shape(read_threads(path)) == sorted(expected.items())


def test_the_demo_mailbox_is_realistic_and_its_numbers_pass_their_check_digits(tmp_path):
    path = demo.write_demo_mailbox(tmp_path / "demo.mbox")
    threads = list(read_threads(path))
    assert len(threads) == 60
    assert len({len(t.messages) for t in threads}) >= 3  # threads of 1 to 4 messages
    made = demo.generate(60, seed=1)
    shipments = [s for thread in made for s in thread.shipments]
    assert len({carrier for _, carrier in shipments}) >= 4
    assert all(rules.check(number).checksum_valid for number, _ in shipments)
    assert sum(1 for thread in made if not thread.shipments) >= 5
    kinds = {part.get_content_type() for t in made for m in t.messages for part in m.walk()}
    assert {"text/html", "multipart/alternative", "text/plain"} <= kinds
