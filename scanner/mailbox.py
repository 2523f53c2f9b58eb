"""Read a mailbox (an .mbox file, a folder of .eml files or a .zip of them) as threads, streaming.

`read_threads` is the scanner's embedded source: the `scan_conversations` planner iterates it
and hands each thread to extraction while the rest of the mailbox is still unread. It works in
two passes:

1. Headers only: every message's Message-ID, In-Reply-To, References and Date, with where its
   bytes are (an offset in the mbox, a file, a zip member). Messages are joined into threads
   with union-find over those ids, including ids of messages absent from the mailbox, so two
   replies to a missing message still share a thread.
2. Thread by thread, in order of their first message's date (ties by root id), each message's
   body is read and parsed, and its text extracted (HTML reduced to text).

One broken message never stops the reading: headers that do not parse give an empty field,
parts that do not decode are decoded with replacement characters or skipped.
"""

from __future__ import annotations

import email.header
import email.utils
import hashlib
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser


@dataclass
class MailMessage:
    message_id: str
    in_reply_to: str
    references: list[str]
    sender_name: str
    sender_address: str
    recipients: list[str]
    sent_at: datetime | None
    subject: str
    text: str


@dataclass
class Thread:
    root_id: str
    subject: str
    participants: list[str]
    messages: list[MailMessage]
    last_message_at: datetime | None


@dataclass
class _Entry:
    """What the first pass keeps of a message: its ids, its date and where its bytes are."""

    message_id: str
    in_reply_to: str
    references: list[str]
    sent_at: datetime | None
    position: int  # order in the mailbox, the tie-break after the date
    locator: object  # (offset, length) in an mbox, a Path, or a zip member name


_ID = re.compile(r"<([^<>\s]+)>")
# compat32: the default policy's header objects cost about ten times as much to parse, and
# the planner reads every message of the mailbox. Headers are decoded by _header, bodies by
# _decoded.
_FULL_PARSER = BytesParser(policy=policy.compat32)
_LATEST = datetime.max.replace(tzinfo=UTC)


def _ids(value: str | None) -> list[str]:
    if not value:
        return []
    found = _ID.findall(str(value))
    if not found and str(value).strip() and " " not in str(value).strip():
        found = [str(value).strip()]  # an id written without its angle brackets
    return found


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


_THREADING_HEADERS = (b"message-id", b"in-reply-to", b"references", b"date")


def _threading_headers(header_bytes: bytes) -> dict[bytes, str]:
    """The first Message-ID, In-Reply-To, References and Date of a header block, unfolded.

    The first pass reads only these four of every message in the mailbox before the first
    thread can be handed out: scanning the lines for them takes a fifth of the time the
    email package takes to parse every header.
    """
    found: dict[bytes, str] = {}
    name = None
    for line in header_bytes.splitlines():
        if line[:1] in (b" ", b"\t"):  # a folded line continues the header before it
            if name is not None:
                found[name] += " " + line.strip().decode("latin-1")
            continue
        key, colon, value = line.partition(b":")
        name = key.strip().lower() if colon else None
        if name in _THREADING_HEADERS and name not in found:
            found[name] = value.strip().decode("latin-1")
        else:
            name = None
    return found


def _entry(header_bytes: bytes, position: int, locator: object) -> _Entry:
    headers = _threading_headers(header_bytes)
    message_ids = _ids(headers.get(b"message-id"))
    in_reply_to = _ids(headers.get(b"in-reply-to"))
    return _Entry(
        message_id=message_ids[0]
        if message_ids
        else hashlib.sha256(header_bytes).hexdigest()[:32] + "@mailbox.invalid",
        in_reply_to=in_reply_to[0] if in_reply_to else "",
        references=_ids(headers.get(b"references")),
        sent_at=_date(headers.get(b"date")),
        position=position,
        locator=locator,
    )


# --- Sources: each yields (header bytes, locator) in mailbox order and reads a message back ----


def _split_headers(raw: bytes) -> bytes:
    end = raw.find(b"\n\n")
    end_crlf = raw.find(b"\r\n\r\n")
    if end_crlf >= 0 and (end < 0 or end_crlf < end):
        return raw[: end_crlf + 4]
    return raw if end < 0 else raw[: end + 2]


class _Mbox:
    """An mbox file: a message starts at a "From " line (the first line, or after a blank one)."""

    def __init__(self, path: Path):
        self.path = path

    def headers(self) -> Iterator[tuple[bytes, object]]:
        with open(self.path, "rb") as file:
            offset = 0
            start: int | None = None  # offset of the current message's first header line
            lines: list[bytes] = []  # its header lines
            in_headers = False
            previous_blank = True
            for line in file:
                if previous_blank and line.startswith(b"From "):
                    if start is not None:
                        yield b"".join(lines), (start, offset - start)
                    start, lines, in_headers = offset + len(line), [], True
                elif start is None:  # no "From " line first: the file is one message
                    start, lines, in_headers = 0, [line], True
                elif in_headers:
                    if line in (b"\n", b"\r\n"):
                        in_headers = False
                    else:
                        lines.append(line)
                previous_blank = line in (b"\n", b"\r\n")
                offset += len(line)
            if start is not None:
                yield b"".join(lines), (start, offset - start)

    def read(self, locator: object) -> bytes:
        offset, length = locator  # type: ignore[misc]
        with open(self.path, "rb") as file:
            file.seek(offset)
            raw = file.read(length)
        # mboxo/mboxrd quoting: a body line ">From " was "From " before it was stored.
        return _FROM_QUOTED.sub(rb"\1", raw)


_FROM_QUOTED = re.compile(rb"(?m)^>(>*From )")


def _read_header_lines(file) -> bytes:
    """Lines up to the first blank one, from a binary file object (an .eml or a zip member)."""
    lines = []
    for line in file:
        if line in (b"\n", b"\r\n"):
            break
        lines.append(line)
    return b"".join(lines)


class _EmlFolder:
    """A folder of .eml files (subfolders included), in path order."""

    def __init__(self, path: Path):
        self.paths = sorted(
            p for p in path.rglob("*") if p.suffix.lower() == ".eml" and p.is_file()
        )

    def headers(self) -> Iterator[tuple[bytes, object]]:
        for path in self.paths:
            try:
                with open(path, "rb") as file:
                    yield _read_header_lines(file), path
            except OSError:
                continue  # unreadable file: the others still count

    def read(self, locator: object) -> bytes:
        return Path(locator).read_bytes()  # type: ignore[arg-type]


class _EmlZip:
    """A .zip of .eml files (in any folder of it), in member order; macOS resource forks skipped."""

    def __init__(self, path: Path):
        self.zip = zipfile.ZipFile(path)
        self.names = [
            info.filename
            for info in self.zip.infolist()
            if not info.is_dir()
            and info.filename.lower().endswith(".eml")
            and not info.filename.startswith("__MACOSX/")
            and not Path(info.filename).name.startswith("._")
        ]

    def headers(self) -> Iterator[tuple[bytes, object]]:
        for name in self.names:
            try:
                with self.zip.open(name) as file:
                    yield _read_header_lines(file), name
            except (OSError, zipfile.BadZipFile, RuntimeError):
                continue  # a damaged or encrypted member: the others still count

    def read(self, locator: object) -> bytes:
        return self.zip.read(locator)  # type: ignore[arg-type]


def _source(path: Path) -> _Mbox | _EmlFolder | _EmlZip:
    if path.is_dir():
        return _EmlFolder(path)
    if zipfile.is_zipfile(path):
        return _EmlZip(path)
    return _Mbox(path)


# --- Threading -------------------------------------------------------------------------------


def _threads(entries: list[_Entry]) -> list[list[_Entry]]:
    """Entries grouped into threads by union-find over Message-ID, In-Reply-To and References.

    Ids of messages that are not in the mailbox are nodes too, so replies to a missing message
    share its thread. Each thread's entries are sorted oldest first (undated ones last, in
    mailbox order).
    """
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        root = node
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def union(a: str, b: str) -> None:
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)

    for entry in entries:
        find(entry.message_id)
        for other in [entry.in_reply_to, *entry.references]:
            if other and other != entry.message_id:
                union(entry.message_id, other)
    groups: dict[str, list[_Entry]] = {}
    for entry in entries:
        groups.setdefault(find(entry.message_id), []).append(entry)
    threads = []
    for members in groups.values():
        members.sort(key=lambda e: (e.sent_at or _LATEST, e.position))
        threads.append(members)
    return threads


def _root(members: list[_Entry]) -> _Entry:
    """The thread's root: its oldest message whose parent is not in the thread (else the first)."""
    ids = {entry.message_id for entry in members}
    for entry in members:
        parents = [entry.in_reply_to, *entry.references]
        if not any(p in ids and p != entry.message_id for p in parents if p):
            return entry
    return members[0]


def _unique_ids(entries: list[_Entry], headers: list[bytes]) -> list[_Entry]:
    """Drop exact copies of a message (same id and headers); give other clashes ids of their own."""
    seen: dict[str, bytes] = {}
    unique = []
    for entry, header in zip(entries, headers, strict=True):
        if entry.message_id in seen:
            if seen[entry.message_id] == header:
                continue
            entry.message_id += "#" + hashlib.sha256(header).hexdigest()[:12]
            if entry.message_id in seen:
                continue
        seen[entry.message_id] = header
        unique.append(entry)
    return unique


# --- Bodies ----------------------------------------------------------------------------------

_BLOCKS = "p, div, table, tr, li, ul, ol, h1, h2, h3, h4, h5, h6, blockquote, pre, dt, dd, hr"


def html_to_text(html: str) -> str:
    """Visible text of an HTML part: a line per block (paragraph, div, table row, br).

    Table cells are separated by " | ", so a quantity cell never runs into the number next to
    it. Scripts, styles and the head are dropped. Line breaks are added to the parsed tree, not
    to the markup (a marker between table rows would be moved out of the table by the parser).
    """
    tree = LexborHTMLParser(html)
    for node in tree.css("script, style, head, title"):
        node.decompose()
    for node in tree.css("td, th"):
        node.insert_after(" | ")
    for node in tree.css(_BLOCKS):
        if node.tag not in ("tr", "li"):  # rows and items: no blank line inside a table or list
            node.insert_before(_BREAK)
        node.insert_after(_BREAK)
    for node in tree.css("br"):
        node.insert_after(_BREAK)
    root = tree.body or tree.root
    if root is None:
        return ""
    # Whitespace in the markup is a space, as in a browser; the breaks added above are lines.
    text = re.sub(r"[ \t\r\n\f\v]+", " ", root.text(separator="")).replace(_BREAK, "\n")
    return _tidy(re.sub(r"(?: \| *)+$", "", text, flags=re.MULTILINE))


_BREAK = "\u2028"


def _tidy(text: str) -> str:
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.splitlines()]
    tidy: list[str] = []
    for line in lines:
        if line or (tidy and tidy[-1]):
            tidy.append(line)
    return "\n".join(tidy).strip()


def _decoded(part: Message) -> str:
    """A text part's content; an unknown or lying charset decodes with replacement characters."""
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except (LookupError, UnicodeError, AssertionError, ValueError, KeyError, AttributeError):
        pass
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - a damaged part is skipped, never the message
        return ""
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("Content-Disposition", "")).split(";")[0].strip().lower()
    return disposition == "attachment" and part.get_content_type() != "message/rfc822"


def _text(part: Message) -> str:
    """The readable text of a part: plain text preferred in alternatives, HTML reduced to text,
    forwarded messages (message/rfc822) included with their headers, attachments skipped."""
    kind = part.get_content_type()
    if _is_attachment(part):
        return ""
    if kind == "multipart/alternative":
        children = part.get_payload() if isinstance(part.get_payload(), list) else []
        texts = [(child.get_content_type(), _text(child)) for child in children]
        plain = [t for k, t in texts if k == "text/plain" and t.strip()]
        if plain:
            return plain[-1]
        rich = [t for _, t in texts if t.strip()]
        return rich[-1] if rich else ""
    if kind == "message/rfc822":
        inner = part.get_payload()
        inner = inner[0] if isinstance(inner, list) and inner else inner
        if not isinstance(inner, Message):
            return ""
        head = "\n".join(
            f"{name}: {_header(inner, name)}"
            for name in ("From", "Date", "Subject", "To")
            if _header(inner, name)
        )
        return f"---------- Forwarded message ----------\n{head}\n\n{_text(inner)}"
    if part.is_multipart():
        children = part.get_payload() if isinstance(part.get_payload(), list) else []
        return "\n\n".join(t for t in (_text(child) for child in children) if t.strip())
    if kind == "text/plain":
        return _decoded(part).replace("\r\n", "\n")
    if kind == "text/html":
        return html_to_text(_decoded(part))
    return ""


def _header(message: Message, name: str) -> str:
    """A header's text, RFC 2047 encoded words decoded; "" when absent or unreadable."""
    try:
        value = message.get(name)
        if value is None:
            return ""
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except Exception:  # noqa: BLE001 - a header that does not parse is read as empty
        try:
            return str(message.get(name) or "")
        except Exception:  # noqa: BLE001
            return ""


def _message(raw: bytes, entry: _Entry) -> MailMessage:
    message = _FULL_PARSER.parsebytes(raw)
    name, address = email.utils.parseaddr(_header(message, "From"))
    recipients = [
        addr.lower()
        for _, addr in email.utils.getaddresses([_header(message, "To"), _header(message, "Cc")])
        if "@" in addr
    ]
    try:
        text = _text(message).strip()
    except Exception:  # noqa: BLE001 - a body that does not parse loses its text, not the thread
        text = ""
    return MailMessage(
        message_id=entry.message_id,
        in_reply_to=entry.in_reply_to,
        references=entry.references,
        sender_name=name,
        sender_address=address.lower(),
        recipients=recipients,
        sent_at=entry.sent_at,
        subject=" ".join(_header(message, "Subject").split()),
        text=text,
    )


def _thread(source, members: list[_Entry], root: _Entry) -> Thread:
    messages = []
    for entry in members:
        try:
            raw = source.read(entry.locator)
        except (OSError, KeyError, zipfile.BadZipFile):
            continue
        messages.append(_message(raw, entry))
    participants = sorted(
        {m.sender_address for m in messages if m.sender_address}
        | {r for m in messages for r in m.recipients}
    )
    dates = [m.sent_at for m in messages if m.sent_at]
    root_message = next((m for m in messages if m.message_id == root.message_id), None)
    subject = root_message or (messages[0] if messages else None)
    return Thread(
        root_id=root.message_id,
        subject=subject.subject if subject else "",
        participants=participants,
        messages=messages,
        last_message_at=max(dates) if dates else None,
    )


def read_threads(path: str | Path) -> Iterator[Thread]:
    """The mailbox's threads, oldest first message first (ties by root id), bodies read lazily.

    `path` is an .mbox file, a folder of .eml files or a .zip of .eml files.
    """
    source = _source(Path(path))
    entries, headers = [], []
    for position, (header, locator) in enumerate(source.headers()):
        entries.append(_entry(header, position, locator))
        headers.append(header)
    entries = _unique_ids(entries, headers)
    del headers
    ordered = []
    for members in _threads(entries):
        root = _root(members)
        ordered.append((members[0].sent_at or _LATEST, root.message_id, members, root))
    ordered.sort(key=lambda item: (item[0], item[1]))
    for _, _, members, root in ordered:
        yield _thread(source, members, root)


def count_messages(path: str | Path) -> int:
    """How many messages the mailbox holds (one headers-only pass)."""
    return sum(1 for _ in _source(Path(path)).headers())
