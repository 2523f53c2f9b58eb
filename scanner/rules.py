"""Rules extractor: tracking numbers with check digits, PO numbers and suppliers from mail text.

The carrier shapes and check-digit algorithms come from the `tracking-numbers` package (a port
of the shared courier data set: UPS `1Z` mod 10, USPS IMpb/S10, FedEx mod 11 and mod 10
variants, DHL mod 7, OnTrac). This module adds what a data set of shapes cannot know: where a
number sits in an email. A bare run of 10 to 20 digits passes some carrier's check digit about
one time in ten, so such a number counts only when a tracking cue (a carrier name, "tracking",
"waybill"...) labels it and no other label (invoice, order, phone...) stands closer.

Callers: `scanner.jobs` runs `extract` on every thread when no OpenAI key is set, validates the
LLM's numbers with `check`, and skips the LLM for threads where `looks_tracking_like` is false.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime

from tracking_numbers import DEFINITIONS
from tracking_numbers.definition import TrackingNumberDefinition

CARRIERS = ("ups", "usps", "fedex", "dhl", "other")


@dataclass(frozen=True)
class TrackingMatch:
    tracking_number: str
    carrier: str
    checksum_valid: bool


@dataclass
class Extraction:
    supplier: str
    shipments: list[dict] = field(default_factory=list)


# --- Carrier shapes --------------------------------------------------------------------------

# The data set's couriers as this product's carriers. Products without a check digit (Amazon
# TBA, CDL, UPS Mail Innovations) are left out: nothing would tell them from any other number.
_COURIER_CARRIER = {"ups": "ups", "usps": "usps", "fedex": "fedex", "dhl": "dhl", "ontrac": "other"}


def _carrier_of(definition: TrackingNumberDefinition, number: str) -> str:
    if definition.courier.code == "s10":
        # S10 is the UPU's international format; the last two letters name the issuing post.
        return "usps" if number.endswith("US") else "other"
    return _COURIER_CARRIER[definition.courier.code]


_DEFINITIONS = [
    definition
    for definition in DEFINITIONS
    if definition.checksum_validator is not None
    and (definition.courier.code in _COURIER_CARRIER or definition.courier.code == "s10")
]


def normalize(number: str) -> str:
    """Upper case without spaces, dashes or other separators: how tracking numbers are stored."""
    return re.sub(r"[^0-9A-Za-z]", "", number).upper()


def _verdicts(number: str) -> list[TrackingMatch]:
    """Every carrier shape `number` (normalized) fits, with its check-digit verdict.

    A shape fits when the data set's pattern matches and its checks other than the check digit
    pass (a USPS 20's service type, an S10's country), except UPS's list of service codes:
    it is incomplete, and `1Z` with a valid check digit is UPS whatever the service.
    """
    verdicts = []
    for definition in _DEFINITIONS:
        result = definition.test(number)
        if result is None:
            continue
        errors = {name for name, _ in result.validation_errors}
        if definition.courier.code == "ups":
            errors.discard("Service Type")
        if errors - {"checksum"}:
            continue
        match = TrackingMatch(number, _carrier_of(definition, number), "checksum" not in errors)
        if match not in verdicts:
            verdicts.append(match)
    return verdicts


def check(number: str) -> TrackingMatch | None:
    """The carrier and check-digit verdict of one candidate, or None if it fits no carrier's shape.

    When several carriers' shapes fit (a 22-digit `92...` number is both USPS IMpb and FedEx
    Ground Economy), a shape whose check digit validates wins, then the data set's order.
    """
    verdicts = _verdicts(normalize(number))
    if not verdicts:
        return None
    return next((v for v in verdicts if v.checksum_valid), verdicts[0])


def check_digit(body: str, carrier: str, suffix: str = "") -> str:
    """The digit that makes `body` + digit + `suffix` a valid number of `carrier` (demo mailbox).

    Raises ValueError when no digit does (the body has no shape of that carrier).
    """
    for digit in "0123456789":
        verdicts = _verdicts(body + digit + suffix)
        if any(v.checksum_valid and v.carrier == carrier for v in verdicts):
            return digit
    raise ValueError(f"no {carrier} check digit makes {body!r} valid")


# --- Finding numbers in text -----------------------------------------------------------------

# Lengths (normalized) of the shapes above; anything else is skipped before `_verdicts`.
_SHAPE_LENGTHS = frozenset({10, 11, 12, 13, 15, 18, 20, 22, 24, 26, 28, 30, 34})

# A token that may be (part of) a tracking number: letters and digits with at least one digit,
# or upper-case letters only (a group of a UPS number: "1Z 999 AA1"), so lower-case words never
# join a number. Parts of a printed number are separated by one space or dash.
_TOKEN = re.compile(r"[0-9A-Za-z]*[0-9][0-9A-Za-z]*|[A-Z]+\b")
_JOIN = re.compile(r"[ \u00a0-]")
# Parts of a number printed in groups are short; a long token stands alone (so two numbers
# separated by a space, or a PO number next to a grouped number, are never joined).
_MAX_GROUP = 6

_POSITIVE_CUES = (
    r"track(?:ing)?|trk|awb|air ?waybill|waybill|consignment|shipment|shipped|ships|shipping"
    r"|sent|dispatched|label|package|parcel|carton|box(?:es)?|pallet|delivery|pro"
    r"|ups|usps|fed ?ex|dhl|postal service|priority mail|ground|express|on ?trac"
)
_NEGATIVE_CUES = (
    r"invoice|inv|bill|order|ord|po|p\.o|purchase|acct|account|customer|cust|client|ref|reference"
    r"|quote|quotation|sku|part|item|lot|serial|batch|model|rma|case|ticket|claim|check|cheque"
    r"|routing|aba|iban|swift|bank|phone|ph|tel|telephone|fax|mobile|cell|call|text|whatsapp"
    r"|direct|office|toll|ext|vat|tax|ein|duns|[tmfp](?= ?:)"
)
_CUE = re.compile(rf"\b(?:(?P<pos>{_POSITIVE_CUES})|(?P<neg>{_NEGATIVE_CUES}))\b", re.IGNORECASE)
_CARRIER_CUES = {
    "ups": re.compile(r"\bups\b", re.IGNORECASE),
    "usps": re.compile(r"\b(?:usps|postal service|priority mail|first[- ]class)\b", re.IGNORECASE),
    "fedex": re.compile(r"\bfed ?ex\b", re.IGNORECASE),
    "dhl": re.compile(r"\bdhl\b", re.IGNORECASE),
}
# How many lines above a number its label may stand ("Tracking #" over the rows of a table),
# within its paragraph.
_LOOKBACK_LINES = 15
# Words that make a whole message about shipping, for a number nothing labels ("Here you go:
# 7489 2361 3467" answering "could you send tracking?").
_SHIPPING_MESSAGE = re.compile(
    r"\b(?:track(?:ing)?|shipped|waybill|ups|usps|fed ?ex|dhl)\b", re.IGNORECASE
)
# The line that opens a signature, and the lines that end it (a quoted or forwarded message).
_SIGN_OFF = re.compile(
    r"^(?:--|thanks|thank you|best|best regards|kind regards|regards|cheers|sincerely"
    r"|many thanks|warm regards)[,.!]?$",
    re.IGNORECASE,
)
_QUOTE_HEADER = re.compile(
    r"^(?:on .+ wrote:|-{3,} ?(?:original message|forwarded message) ?-{3,}|from: )",
    re.IGNORECASE,
)
_SIGNATURE_LINES = 10


@dataclass(frozen=True)
class _Found:
    match: TrackingMatch
    start: int  # offset in the text
    line: int


def _strong(number: str) -> bool:
    """Shapes a random number almost never has: letters, or 22+ digits with a carrier prefix."""
    return not number.isdigit() or (
        len(number) >= 22 and number.startswith(("91", "92", "93", "94", "95", "420", "100", "96"))
    )


_PHONE_CUE = re.compile(
    r"\b(?:call|phone|ph|tel|telephone|fax|mobile|cell|dial|text|whatsapp|reach|contact"
    r"|questions|line)\b|\b[tmfp] ?:",
    re.IGNORECASE,
)
_TRACKING_WORD = re.compile(r"\b(?:track(?:ing)?|trk|awb|waybill)\b", re.IGNORECASE)


def _phone_like(text: str, tokens: list[re.Match], line_start: int) -> bool:
    """Whether digits are a telephone number.

    1. grouped 3-3-4 (after an optional 1), or 10-11 digits in national groups ("020 7946 0958");
    2. after a '+', '(' or ')' ("+49 (0)89 5405 5014");
    3. after a telephone word on the line ("Call our shipping line at ...") with no tracking
       word between them: a generic shipping word there does not make it a tracking number.
    """
    lengths = [len(t.group()) for t in tokens]
    first = tokens[0].group()
    if lengths in ([3, 3, 4], [1, 3, 3, 4]) or (
        len(tokens) in (2, 3) and sum(lengths) <= 11 and first[0] == "0" and 3 <= len(first) <= 5
    ):
        return True
    start = tokens[0].start()
    if any(c in "+()" for c in text[max(0, start - 2) : start]):
        return True
    cues = list(_PHONE_CUE.finditer(text, line_start, start))
    return bool(cues) and not _TRACKING_WORD.search(text, cues[-1].end(), start)


def _runs(text: str) -> list[list[re.Match]]:
    """Tokens grouped into runs of parts separated by one space or dash."""
    runs: list[list[re.Match]] = []
    previous = None
    for token in _TOKEN.finditer(text):
        joined = (
            previous is not None
            and token.start() - previous.end() == 1
            and _JOIN.fullmatch(text[previous.end()])
            and len(token.group()) <= _MAX_GROUP
            and len(previous.group()) <= _MAX_GROUP
        )
        if joined:
            runs[-1].append(token)
        else:
            runs.append([token])
        previous = token
    return runs


def _windows(run: list[re.Match]):
    """The whole run, then its shorter windows, longest first ("UPS 1Z 999 AA1...": a word first).

    A run that has a carrier's shape as a whole is one number, valid or mistyped: no window
    inside it is tried, or a mistyped number would yield a shorter number of another carrier.
    """
    count = len(run)
    if count > 1 and check("".join(t.group() for t in run)) is not None:
        yield 0, count
        return
    for size in range(count, 0, -1):
        for first in range(count - size + 1):
            yield first, first + size


def _quote_depth(line: str) -> int:
    return len(line) - len(line.lstrip("> "))


def _is_blank(line: str) -> bool:
    return not line.strip("> \t")


def _label(text: str, start: int, end: int, line_start: int) -> str | None:
    """'pos', 'neg' or None: the label of the number at text[start:end].

    The cue nearest before it on its line, else the first after it on its line, else the
    nearest in the lines above it in its paragraph (at most `_LOOKBACK_LINES`).
    """
    before = list(_CUE.finditer(text, line_start, start))
    if before:
        return "pos" if before[-1].group("pos") else "neg"
    line_end = text.find("\n", end)
    after = _CUE.search(text, end, len(text) if line_end < 0 else line_end)
    if after:
        return "pos" if after.group("pos") else "neg"
    above_start = line_start
    for _ in range(_LOOKBACK_LINES):
        if above_start == 0:
            break
        previous_start = text.rfind("\n", 0, above_start - 1) + 1
        if _is_blank(text[previous_start : above_start - 1]):
            break
        above_start = previous_start
    above = list(_CUE.finditer(text, above_start, line_start))
    if above:
        return "pos" if above[-1].group("pos") else "neg"
    return None


def _signature_spans(text: str) -> list[tuple[int, int]]:
    """Offsets of signature blocks: from a sign-off line ("--", "Thanks,") to a blank line, a
    quoted or forwarded message, or `_SIGNATURE_LINES` lines."""
    spans = []
    offset = 0
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if _SIGN_OFF.match(line.lstrip("> ").strip()):
            start, depth = offset, _quote_depth(line)
            end = offset + len(line) + 1
            for follower in lines[index + 1 : index + 1 + _SIGNATURE_LINES]:
                if (
                    _is_blank(follower)
                    or _quote_depth(follower) != depth
                    or _QUOTE_HEADER.match(follower.lstrip("> "))
                ):
                    break
                end += len(follower) + 1
            spans.append((start, end))
        offset += len(line) + 1
        index += 1
    return spans


def _nearest_named(
    text: str, start: int, end: int, verdicts: list[TrackingMatch]
) -> TrackingMatch | None:
    """Of several carriers whose check digit accepts a number, the one named closest to it."""
    best, best_distance = None, 300
    for verdict in verdicts:
        cue = _CARRIER_CUES.get(verdict.carrier)
        if cue is None:
            continue
        for named in cue.finditer(text, max(0, start - 300), end + 300):
            distance = start - named.end() if named.end() <= start else named.start() - end
            if distance < best_distance:
                best, best_distance = verdict, distance
    return best


def _find(
    text: str, not_tracking: set[str] | None = None, shipping_thread: bool = False
) -> list[_Found]:
    """Valid numbers in `text` with their offsets (see `find_tracking_numbers`).

    `not_tracking`: numbers known to be something else (the thread's PO numbers).
    `shipping_thread`: another message of the thread speaks of tracking or a carrier, so a
    number nothing labels counts here too.
    """
    not_tracking = set(not_tracking or ()) | {normalize(n) for n in find_po_numbers(text)}
    found: list[_Found] = []
    seen: set[str] = set()
    signatures: list[tuple[int, int]] | None = None
    shipping_message: bool | None = True if shipping_thread else None
    for run in _runs(text):
        taken_until = -1
        for first, last in _windows(run):
            tokens = run[first:last]
            if tokens[0].start() < taken_until:
                continue
            number = "".join(t.group() for t in tokens).upper()
            if len(number) not in _SHAPE_LENGTHS or number in not_tracking:
                continue
            verdicts = [v for v in _verdicts(number) if v.checksum_valid]
            if not verdicts:
                continue
            start, end = tokens[0].start(), tokens[-1].end()
            if not _strong(number):
                line_start = text.rfind("\n", 0, start) + 1
                if _phone_like(text, tokens, line_start):
                    continue
                if signatures is None:
                    signatures = _signature_spans(text)
                if any(s <= start < e for s, e in signatures):
                    continue
                label = _label(text, start, end, line_start)
                if label is None:
                    if shipping_message is None:
                        shipping_message = _SHIPPING_MESSAGE.search(text) is not None
                    label = "pos" if shipping_message else None
                if label != "pos":
                    continue
            match = verdicts[0]
            if len(verdicts) > 1:
                match = _nearest_named(text, start, end, verdicts) or match
            taken_until = end
            if number not in seen:
                seen.add(number)
                found.append(_Found(match, start, text.count("\n", 0, start)))
    found.sort(key=lambda f: f.start)
    return found


def find_tracking_numbers(text: str) -> list[TrackingMatch]:
    """Check-digit-valid tracking numbers in `text`, deduplicated, in order of first appearance.

    Numbers printed in groups ("1Z 999 AA1 01 2345 678 4", "7489-2361-3467") are joined. A
    number of digits only and at most 20 of them counts only under a tracking cue (see the
    module docstring); phone-shaped digits never do.
    """
    return [f.match for f in _find(text)]


_TRACKING_LIKE = re.compile(r"(?:\d[ \u00a0-]?){10}|1Z[0-9A-Z]{4}", re.IGNORECASE)


def looks_tracking_like(text: str) -> bool:
    """Whether `text` has ten digits in a row (spaces, dashes allowed) or a `1Z`: a pre-filter."""
    return _TRACKING_LIKE.search(text) is not None


# --- PO numbers ------------------------------------------------------------------------------

_PO = re.compile(
    r"\b(?:P\.?\s?O\.?|purchase\s+order)(?:\s*(?:number|no\.?|num|#))?\s*[:#.\-]?\s*"
    r"(?P<number>(?=[A-Z0-9\-]*\d)[A-Z0-9][A-Z0-9\-]{2,19})\b",
    re.IGNORECASE,
)


def find_po_numbers(text: str) -> list[str]:
    """PO numbers after a PO cue, in order, deduplicated.

    "PO 4500123456", "P.O. #: 77812", "purchase order 8812", "PO-2025-0142" (2025-0142).
    """
    numbers: list[str] = []
    for match in _PO.finditer(text):
        number = match.group("number").strip("-").upper()
        if number not in numbers:
            numbers.append(number)
    return numbers


def _po_near(text: str, start: int) -> str:
    """The PO number labelled nearest before `start`, else the first after it, else ''."""
    before = list(_PO.finditer(text, 0, start))
    if before:
        return before[-1].group("number").strip("-").upper()
    after = _PO.search(text, start)
    return after.group("number").strip("-").upper() if after else ""


# --- Dates -----------------------------------------------------------------------------------

_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        start=1,
    )
    for name in names
}
_DATE = re.compile(
    r"(?P<iso>(?P<y>20\d\d)-(?P<m>\d\d)-(?P<d>\d\d))"
    r"|(?P<us>(?P<um>\d{1,2})/(?P<ud>\d{1,2})/(?P<uy>20\d\d|\d\d))"
    r"|(?P<named>(?P<nm>[A-Za-z]{3,9})\.? (?P<nd>\d{1,2})(?:st|nd|rd|th)?,? (?P<ny>20\d\d))",
)
_SHIP_CUE = re.compile(r"\b(?:ship(?:ped|s|ping)?|dispatched|sent out|went out)\b", re.IGNORECASE)


def _parse_date(match: re.Match) -> date | None:
    try:
        if match.group("iso"):
            return date(int(match.group("y")), int(match.group("m")), int(match.group("d")))
        if match.group("us"):
            year = int(match.group("uy"))
            year = year + 2000 if year < 100 else year
            return date(year, int(match.group("um")), int(match.group("ud")))
        month = _MONTHS.get(match.group("nm").lower())
        if month:
            return date(int(match.group("ny")), month, int(match.group("nd")))
    except ValueError:
        return None
    return None


def _shipped_date(text: str, sent_at: datetime | None) -> str:
    """A date on a line that speaks of shipping, else the sending date if the text does, else ''."""
    for line in text.splitlines():
        if line.lstrip().startswith(">") or not _SHIP_CUE.search(line):
            continue
        for match in _DATE.finditer(line):
            parsed = _parse_date(match)
            if parsed:
                return parsed.isoformat()
    if sent_at is not None and _SHIP_CUE.search(text):
        return sent_at.date().isoformat()
    return ""


# --- Supplier --------------------------------------------------------------------------------

# Senders that relay a supplier's shipment but are not the supplier.
_CARRIER_DOMAINS = re.compile(
    r"(?:^|\.)(?:ups|fedex|usps|dhl|ontrac|shipstation|narvar|aftership)\.[a-z.]+$"
)
_COMPANY = re.compile(
    r"^[A-Z0-9][\w&'.,\- ]{1,60}?\b(?:Inc|LLC|Ltd|Co|Corp|Corporation|Company|GmbH|S\.A|B\.V|PLC"
    r"|Supply|Supplies|Industries|Manufacturing|Mfg|Distribution|Distributors|Logistics|Trading"
    r"|Wholesale|Group)\b\.?$"
)
_FREE_MAIL = frozenset(
    {"gmail", "yahoo", "outlook", "hotmail", "icloud", "aol", "proton", "protonmail", "live"}
)


def _domain_name(address: str) -> str:
    """The name part of an address's domain ('acme-fasteners' of 'x@mail.acme-fasteners.co.uk')."""
    labels = address.rpartition("@")[2].lower().split(".")
    if len(labels) >= 3 and labels[-2] in ("co", "com", "org", "net", "ac"):
        return labels[-3]
    return labels[-2] if len(labels) >= 2 else labels[0]


_ROLE_SUFFIX = re.compile(
    r"\s*[-|,]?\s*\b(?:orders?|shipping|sales|support|customer service|team|notifications?"
    r"|warehouse|fulfil?ment|accounts?|billing|no-?reply)$",
    re.IGNORECASE,
)


def _signature_company(text: str, domain: str) -> str:
    """The company line of the text's own (unquoted) signature.

    A line ending in a company word ("Acme Fasteners Inc.", "Keystone Electrical Supply"), or
    else a signature line whose first word is in the sender's domain ("Juniper Biologicals"
    from juniperbio.com).
    """
    lines = [line.strip() for line in text.splitlines()]
    own = [line for line in lines if line and not line.startswith(">")]
    for line in reversed(own):
        if len(line) <= 60 and _COMPANY.match(line) and not _CARRIER_CUES["ups"].search(line):
            return line
    if not domain:
        return ""
    for start, end in _signature_spans(text):
        for line in text[start:end].splitlines()[1:]:
            line = line.strip()
            first = re.match(r"[A-Za-z]+", line)
            if line.startswith(">") or not first or len(first.group()) < 3:
                continue
            if re.search(r"[\d@]|www\.", line) or len(line) > 60:
                continue
            if first.group().lower() in domain.replace("-", ""):
                return line
    return ""


def _domain_company(address: str) -> str:
    """'shipping@acme-fasteners.com' -> 'Acme Fasteners'; '' for free-mail and carrier domains."""
    domain = address.rpartition("@")[2].lower()
    if not domain or _CARRIER_DOMAINS.search(domain):
        return ""
    name = _domain_name(address)
    if name in _FREE_MAIL:
        return ""
    return " ".join(part.capitalize() for part in re.split(r"[-_]", name) if part)


def _supplier(
    messages: list[tuple[str, str]], senders: list[tuple[str, str]] | None, shipping: list[int]
) -> str:
    """The supplier of a thread, from the messages that carry tracking numbers first.

    1. the company line of the message's signature;
    2. the sender's display name less a role ("Acme Fasteners Orders"), when it reads as a
       company, or names the domain;
    3. the sender's domain, title-cased.
    Carrier and free-mail senders are skipped.
    """
    order = shipping + [i for i in range(len(messages)) if i not in shipping]
    senders = senders or []
    for index in order:
        address = senders[index][1] if index < len(senders) else ""
        domain = "" if not address or _CARRIER_DOMAINS.search(address) else _domain_name(address)
        company = _signature_company(messages[index][1], domain)
        if company:
            return company
    for index in order:
        if index >= len(senders):
            continue
        name, address = senders[index]
        company = _domain_company(address)
        if not company:
            continue
        name = _ROLE_SUFFIX.sub("", name).strip()
        first = name.split(" ")[0].lower() if name else ""
        if name and (_COMPANY.match(name) or (len(first) >= 3 and first in _domain_name(address))):
            return name
        return company
    return ""


# --- Thread extraction -----------------------------------------------------------------------


def extract(
    messages: list[tuple[str, str]],
    senders: list[tuple[str, str]] | None = None,
    sent_at: list[datetime | None] | None = None,
) -> Extraction:
    """Shipments of one thread, from its messages' (subject, text), oldest first.

    `senders` ((display name, address) per message) and `sent_at` are optional; they improve the
    supplier and the shipped date. A number repeated in a quoted reply counts once, with the PO
    number and date of the message where it first appears.
    """
    shipments: list[dict] = []
    seen: set[str] = set()
    shipping: list[int] = []
    thread_pos = [po for subject, text in messages for po in find_po_numbers(f"{subject}\n{text}")]
    not_tracking = {normalize(po) for po in thread_pos}
    shipping_thread = any(_SHIPPING_MESSAGE.search(f"{s}\n{t}") for s, t in messages)
    for index, (subject, text) in enumerate(messages):
        body = f"{subject}\n\n{text}"  # a paragraph of its own: no label for the first line
        found = _find(body, not_tracking, shipping_thread)
        if found and index not in shipping:
            shipping.append(index)
        date_sent = sent_at[index] if sent_at and index < len(sent_at) else None
        shipped = _shipped_date(text, date_sent) if found else ""
        for item in found:
            match = item.match
            if match.tracking_number in seen:
                continue
            seen.add(match.tracking_number)
            strong = _strong(match.tracking_number)
            shipments.append(
                {
                    "tracking_number": match.tracking_number,
                    "carrier": match.carrier,
                    "po_number": _po_near(body, item.start) or (thread_pos or [""])[0],
                    "shipped_date": shipped,
                    "confidence": 0.95 if strong else 0.85,
                    "checksum_valid": match.checksum_valid,
                }
            )
    return Extraction(supplier=_supplier(messages, senders, shipping), shipments=shipments)
