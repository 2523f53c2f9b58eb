"""Scanning inboxes for shipments with real workers, against local OpenAI and Front servers."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from project import engine
from project.models import Job
from scanner import extract
from scanner.mailbox import read_threads
from scanner.models import Conversation, ExtractionResult, Message, Shipment
from tests import mailgen
from tests.front_server import FrontConversation, FrontMail, FrontServer
from tests.helpers import wait_for_job
from tests.mailgen import model_answer
from tests.openai_server import OpenAIServer, user_text


def expected(labels: mailgen.Labels) -> set[str]:
    return {number for pairs in labels.values() for number, _ in pairs}


def scan(**params) -> Job:
    return engine.launch("scan_conversations", params, concurrency=10)


@pytest.fixture
def inbox(tmp_path):
    """A labelled mailbox of 30 conversations: (path, labels)."""
    path = tmp_path / "inbox.mbox"
    return path, mailgen.write_mbox(path, conversations=30, seed=7)


def test_a_mailbox_scan_finds_the_labelled_shipments_and_a_second_scan_skips_them(workers, inbox):
    path, labels = inbox
    workers(2)
    job = wait_for_job(scan(source=f"mailbox:{path}", extractor="rules"))
    assert job.status == Job.Status.SUCCEEDED
    assert set(Shipment.objects.values_list("tracking_number", flat=True)) == expected(labels)
    for shipment in Shipment.objects.select_related("conversation"):
        assert (shipment.tracking_number, shipment.carrier) in labels[
            shipment.conversation.external_id
        ]
    assert job.total == Conversation.objects.count() == len(labels)
    assert job.tallies["fetched"] == len(labels)
    assert job.tallies["processed"] == len(labels)
    assert job.tallies["shipments_added"] == len(expected(labels))
    with_tracking = sum(1 for pairs in labels.values() if pairs)
    assert job.tallies["with_tracking"] == with_tracking
    assert job.summary.startswith(f"📊 Scan complete: {len(labels)} conversations fetched, ")
    assert not Conversation.objects.needing_scan().exists()

    again = wait_for_job(scan(source=f"mailbox:{path}", extractor="rules"))
    assert again.skipped == len(labels)
    assert again.tallies["already_scanned"] == len(labels)
    assert Shipment.objects.count() == len(expected(labels))

    rescan = wait_for_job(scan(source=f"mailbox:{path}", extractor="rules", rescan=True))
    assert rescan.tallies["shipments_duplicate"] == len(expected(labels))
    assert rescan.tallies.get("shipments_added", 0) == 0
    assert Shipment.objects.count() == len(expected(labels))


def test_the_openai_extractor_rides_out_faults_without_asking_twice(workers, inbox, settings):
    path, labels = inbox
    with OpenAIServer(answer=model_answer, faults={"429": 0.05}, hang=5, seed=3) as server:
        server.script(["429", "500", "malformed", "bad_output", "timeout"])
        workers(
            2,
            OPENAI_API_KEY="test-key",
            OPENAI_BASE_URL=server.url,
            OPENAI_TIMEOUT="2",
            BATCH_MAX_ATTEMPTS="8",
        )
        settings.OPENAI_API_KEY = "test-key"
        job = wait_for_job(scan(source=f"mailbox:{path}", extractor="openai"), timeout=120)
    assert job.status == Job.Status.SUCCEEDED, job.failure_counts
    assert set(Shipment.objects.values_list("tracking_number", flat=True)) == expected(labels)
    answered = [r for r in server.requests if r.status == 200 and not r.fault]
    threads = Counter(hashlib.sha1(user_text(r.body).encode()).hexdigest() for r in answered)
    assert max(threads.values()) == 1  # no conversation was extracted twice
    assert len(answered) == job.tallies["llm_calls"]
    assert job.tallies["llm_calls"] + job.tallies.get("llm_skipped", 0) == len(labels)
    assert job.tallies["tokens_used"] > 0
    assert job.tallies["estimated_cost_usd"] > 0
    assert ExtractionResult.objects.filter(job=job, error="").count() == len(labels)


def test_a_failed_extraction_leaves_the_conversation_unscanned_with_its_error(
    workers, inbox, settings
):
    path, labels = inbox
    with OpenAIServer(answer=model_answer, faults={"500": 1.0}) as server:
        workers(
            2,
            OPENAI_API_KEY="test-key",
            OPENAI_BASE_URL=server.url,
            BATCH_MAX_ATTEMPTS="2",
        )
        settings.OPENAI_API_KEY = "test-key"
        job = wait_for_job(scan(source=f"mailbox:{path}", extractor="openai"), timeout=120)
        asked = job.tallies.get("llm_skipped", 0)
        assert job.failed == len(labels) - asked
        failed = Conversation.objects.filter(scan_state=Conversation.ScanState.ERROR)
        assert failed.count() == job.failed
        assert all(c.scanned_at is None and "500" in c.scan_error for c in failed)
        assert set(Conversation.objects.needing_scan()) == set(failed)

        server.faults = {}
        again = wait_for_job(scan(source=f"mailbox:{path}", extractor="openai"), timeout=120)
    assert again.status == Job.Status.SUCCEEDED
    assert again.tallies["processed"] == job.failed
    assert not Conversation.objects.needing_scan().exists()


def test_model_output_that_names_numbers_not_in_the_thread_is_not_stored(workers, inbox, settings):
    path, labels = inbox

    def inventive(body: dict) -> str:
        answer = json.loads(model_answer(body))
        invented = {
            "tracking_number": "1Z999AA10123456784",  # valid check digit, not in the text
            "carrier": "ups",
            "po_number": "",
            "shipped_date": "",
            "confidence": 0.99,
        }
        answer["shipments"].append(invented)
        return json.dumps(answer)

    with OpenAIServer(answer=inventive) as server:
        workers(1, OPENAI_API_KEY="test-key", OPENAI_BASE_URL=server.url)
        settings.OPENAI_API_KEY = "test-key"
        job = wait_for_job(scan(source=f"mailbox:{path}", extractor="openai"), timeout=120)
    assert job.status == Job.Status.SUCCEEDED
    assert not Shipment.objects.filter(tracking_number="1Z999AA10123456784").exists()
    assert set(Shipment.objects.values_list("tracking_number", flat=True)) == expected(labels)
    rejected = ExtractionResult.objects.filter(job=job, llm_skipped=False)
    assert rejected.exists()
    for extraction in rejected:
        assert {"tracking_number": "1Z999AA10123456784", "reason": "not in the conversation"} in (
            extraction.rejected
        )


def front_inbox(path) -> tuple[list[FrontConversation], dict[str, list[tuple[str, str]]]]:
    """The labelled mailbox as Front conversations, and its labels by Front id."""
    labels = mailgen.write_mbox(path, conversations=23, seed=11)
    conversations, by_id = [], {}
    for n, thread in enumerate(read_threads(path)):
        mails = [
            FrontMail(f"msg_{n}_{i}", m.sender_name, m.sender_address, m.sent_at, m.subject, m.text)
            for i, m in enumerate(thread.messages)
        ]
        mails[0].html_only = n % 3 == 0  # some channels send only HTML
        conversations.append(FrontConversation(f"cnv_{n}", thread.subject, mails))
        by_id[f"cnv_{n}"] = labels[thread.root_id]
    return conversations, by_id


def test_a_front_inbox_is_read_through_every_page_despite_faults(workers, tmp_path, settings):
    conversations, labels = front_inbox(tmp_path / "front.mbox")
    with FrontServer(conversations, page_size=5, message_page_size=2, remaining=10) as front:
        front.script(["429", "500", "malformed"])
        env = {
            "FRONT_API_TOKEN": "front-token",
            "FRONT_BASE_URL": front.base_url,
            "FRONT_INBOX_ID": "inb_test",
            "FRONT_RPM": "6000",
        }
        settings.FRONT_API_TOKEN, settings.FRONT_INBOX_ID = "front-token", "inb_test"
        workers(2, **env)
        job = wait_for_job(scan(source="front", extractor="rules"), timeout=120)
        assert job.status == Job.Status.SUCCEEDED, job.failure_counts
        assert job.total == len(conversations)
        found = {s.tracking_number: s for s in Shipment.objects.select_related("conversation")}
        assert set(found) == {n for pairs in labels.values() for n, _ in pairs}
        for number, shipment in found.items():
            assert (number, shipment.carrier) in labels[shipment.conversation.external_id]
        # Every message of every conversation, across message pages, oldest first.
        for c in conversations:
            stored = Message.objects.filter(conversation__external_id=c.id)
            assert [m.external_id for m in stored] == [m.id for m in c.messages]

        limited = wait_for_job(scan(source="front", max_pages=2, rescan=True), timeout=60)
        assert limited.total == 10


def test_the_model_is_not_asked_about_threads_with_no_tracking_like_text():
    message = extract.Message("Ann", "ann@example.com", None, "Thanks", "See you on Monday!")
    result = extract.with_openai([message])
    assert result.llm_skipped and result.tokens_saved > 0 and not result.shipments


def test_checked_keeps_what_the_text_and_the_check_digits_support():
    text = "Tracking 1Z 999 AA1 0123456784 and invoice 1Z999AA10123456785"
    proposed = [
        {"tracking_number": "1z999aa1-0123456784", "carrier": "fedex", "po_number": "",
         "shipped_date": "2025-01-02", "confidence": 0.8},
        {"tracking_number": "1Z999AA10123456785", "carrier": "ups", "po_number": "",
         "shipped_date": "", "confidence": 0.8},
        {"tracking_number": "9400100000000000000000", "carrier": "usps", "po_number": "",
         "shipped_date": "", "confidence": 0.8},
    ]  # fmt: skip
    kept, rejected = extract.checked(proposed, text)
    assert [(s["tracking_number"], s["carrier"]) for s in kept] == [("1Z999AA10123456784", "ups")]
    assert kept[0]["checksum_valid"] and kept[0]["shipped_date"] == "2025-01-02"
    assert {r["reason"] for r in rejected} == {"check digit fails", "not in the conversation"}


def test_checked_rejects_a_number_longer_than_any_carrier_issues():
    reference = "A1B2C3D4E5" * 5  # 50 letters and digits, in the text
    proposed = [{"tracking_number": reference, "carrier": "other", "po_number": "",
                 "shipped_date": "", "confidence": 0.9}]  # fmt: skip
    kept, rejected = extract.checked(proposed, f"Reference {reference}")
    assert kept == [] and rejected == [{"tracking_number": reference, "reason": "too long"}]


def test_the_openai_limiter_paces_requests_from_the_first_one(workers, inbox, settings):
    path, labels = inbox
    with OpenAIServer(answer=model_answer, latency=0.05) as server:
        workers(2, OPENAI_API_KEY="test-key", OPENAI_BASE_URL=server.url, OPENAI_RPM="600")
        settings.OPENAI_API_KEY = "test-key"
        job = wait_for_job(scan(source=f"mailbox:{path}", extractor="openai"), timeout=120)
    assert job.status == Job.Status.SUCCEEDED
    calls = len(server.requests)
    # 600 a minute is one every 0.1 s: never more than 10 (11 at a window's edge) in a second,
    # no burst at the start either.
    assert server.max_in_window(1.0) <= 11
    arrivals = sorted(r.at for r in server.requests)
    assert arrivals[-1] - arrivals[0] >= (calls - 1) * 0.1 * 0.9


def test_an_item_run_again_in_its_job_keeps_its_extraction_instead_of_asking_again(
    transactional_db, redis_db, settings
):
    """Its worker died after recording the extraction and before the engine recorded the
    item: the item runs again, in the same job, and must not ask the model twice."""
    from project.kinds import Item, get_kind
    from project.models import JobItem

    conversation = Conversation.objects.create(source="mailbox", external_id="<t1@example.com>")
    Message.objects.create(
        conversation=conversation,
        external_id="<t1@example.com>",
        sender_name="Acme Parts",
        sender_address="ship@acme.example",
        subject="Shipped: PO 4471",
        body="Your order shipped with UPS, tracking 1Z999AA10123456784.",
    )
    answer = {"supplier": "Acme Parts", "shipments": [
        {"tracking_number": "1Z999AA10123456784", "carrier": "ups", "po_number": "4471",
         "shipped_date": "2026-06-09", "confidence": 0.9}]}  # fmt: skip
    with OpenAIServer(answer=lambda body: json.dumps(answer)) as server:
        settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "test-key", server.url
        job = engine.launch(
            "scan_conversations",
            {"source": "mailbox:unused.mbox", "extractor": "openai", "rescan": True},
            keys=[str(conversation.pk)],
        )
        row = JobItem.objects.get(job=job)
        kind = get_kind("scan_conversations")
        first = kind.run_item(job, Item(row.id, row.key, 1))
        again = kind.run_item(job, Item(row.id, row.key, 1))

    assert len(server.requests) == 1
    assert first.status == again.status == "succeeded"
    assert first.tallies["shipments_added"] == again.tallies["shipments_added"] == 1
    assert "llm_calls" not in again.tallies  # counted once, by the run that asked
    extraction = ExtractionResult.objects.get(conversation=conversation, job=job)
    assert [s.tracking_number for s in extraction.shipments.all()] == ["1Z999AA10123456784"]
    shipment = Shipment.objects.get()
    assert (shipment.carrier, shipment.po_number, str(shipment.shipped_date)) == (
        "ups",
        "4471",
        "2026-06-09",
    )
    conversation.refresh_from_db()
    assert conversation.scan_state == "scanned"
