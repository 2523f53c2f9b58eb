"""Labelled test mailboxes: the demo generator's threads with what each really contains.

The threads come from `scanner.demo.generate` (suppliers, carriers, forwarded chains, quoted
replies, HTML-only and multipart messages, grouped numbers, hard negatives); this module labels
them by root Message-ID and writes them in the three forms the scanner reads.

    messages, labels = generate(100, seed=3)
    labels["1a2b...@acme-fasteners.com"] == [("1Z999AA10123456784", "ups")]
    write_mbox(tmp_path / "inbox.mbox", conversations=1000, seed=1)
"""

from __future__ import annotations

import json
import zipfile
from email.message import Message
from pathlib import Path

from scanner import demo, rules
from tests.openai_server import user_text

Labels = dict[str, list[tuple[str, str]]]


def threads(conversations: int, seed: int = 1) -> list[demo.Conversation]:
    """The labelled threads themselves (root id, supplier, messages, shipments, PO numbers)."""
    return demo.generate(conversations, seed)


def generate(conversations: int, seed: int = 1) -> tuple[list[Message], Labels]:
    """All messages in sending order, and per root Message-ID its (tracking number, carrier)s."""
    made = demo.generate(conversations, seed)
    messages = [message for thread in made for message in thread.messages]
    return messages, {thread.root_id: list(thread.shipments) for thread in made}


def labels_of(made: list[demo.Conversation]) -> Labels:
    return {thread.root_id: list(thread.shipments) for thread in made}


def write_mbox(path: str | Path, conversations: int, seed: int = 1) -> Labels:
    """Write a labelled mailbox as one .mbox file; returns its labels."""
    made = demo.generate(conversations, seed)
    demo.write_mbox(path, made)
    return labels_of(made)


def write_eml_dir(path: str | Path, conversations: int, seed: int = 1) -> Labels:
    """Write a labelled mailbox as a folder of .eml files (one per message); returns its labels."""
    made = demo.generate(conversations, seed)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    number = 0
    for thread in made:
        for message in thread.messages:
            number += 1
            (folder / f"{number:06d}.eml").write_bytes(message.as_bytes())
    return labels_of(made)


def write_zip(path: str | Path, conversations: int, seed: int = 1) -> Labels:
    """Write a labelled mailbox as a .zip of .eml files (as uploaded to the dashboard)."""
    made = demo.generate(conversations, seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        number = 0
        for thread in made:
            for message in thread.messages:
                number += 1
                archive.writestr(f"inbox/{number:06d}.eml", message.as_bytes())
    return labels_of(made)


def model_answer(body: dict) -> str:
    """A stand-in model that reads threads well: what the rules find, in the scanner's schema
    (tests/openai_server.py calls it with each request's body)."""
    shipments = [
        {
            "tracking_number": match.tracking_number,
            "carrier": match.carrier,
            "po_number": "",
            "shipped_date": "",
            "confidence": 0.9,
        }
        for match in rules.find_tracking_numbers(user_text(body))
    ]
    return json.dumps({"supplier": "", "shipments": shipments})
