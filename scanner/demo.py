"""A generated mailbox of supplier shipping emails: the scanner's demo data and its test data.

`generate(count, seed)` makes threads of 1 to 4 messages between a buying team and a dozen
suppliers, each labelled with the tracking numbers (and carriers) it really contains. What
makes them realistic, and hard for an extractor:

- several carriers (UPS, USPS, FedEx, DHL, OnTrac) with check-digit-valid numbers, printed
  whole or in groups split by spaces or dashes, in the subject, a sentence, a list or a table;
- forwarded carrier notifications and forwarded chains, quoted replies (`>` and Outlook's
  "Original Message") that repeat a number, corrections of a mistyped number;
- plain-text, HTML-only and multipart/alternative messages, signatures;
- numbers that are not tracking numbers: invoice numbers shaped like a carrier's number but
  with a wrong check digit, telephone numbers in every usual format, PO, order, account,
  customer and bank numbers of random digits, dates, amounts, ZIP codes;
- threads with no tracking number at all (quotes, invoices, backorders, remittances).

`write_demo_mailbox` writes them as an .mbox for the dashboard's demo; `tests/mailgen.py`
writes them as .mbox, .eml folders and .zip files for the tests and benchmarks.
"""

from __future__ import annotations

import mailbox
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime
from html import escape
from pathlib import Path

from scanner.rules import check, check_digit


@dataclass
class Conversation:
    root_id: str
    supplier: str
    messages: list[Message]
    # Expected (tracking number normalized, carrier) pairs, in order of first appearance.
    shipments: list[tuple[str, str]] = field(default_factory=list)
    po_numbers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Supplier:
    name: str
    domain: str
    people: tuple[str, ...]
    carriers: tuple[str, ...]
    po_style: str  # how the buyer's PO numbers look in this supplier's mail
    html: float  # share of its mail sent as HTML


SUPPLIERS = (
    _Supplier(
        "Acme Fasteners Inc.",
        "acme-fasteners.com",
        ("Dana Whitfield", "Luis Ortega"),
        ("ups", "fedex"),
        "sap",
        0.2,
    ),
    _Supplier(
        "Brightline Medical Supply",
        "brightlinemed.com",
        ("Maria Lopez",),
        ("fedex", "ups"),
        "dash",
        0.6,
    ),
    _Supplier(
        "Cascade Lab Products LLC",
        "cascadelab.com",
        ("Tom Becker", "Priya Nair"),
        ("ups", "usps"),
        "hash",
        0.3,
    ),
    _Supplier("Delta Packaging Co.", "deltapack.net", ("Shipping Desk",), ("fedex",), "sap", 0.8),
    _Supplier(
        "Evergreen Office Supplies",
        "evergreen-office.com",
        ("Karen Mills",),
        ("usps", "ups"),
        "plain",
        0.5,
    ),
    _Supplier(
        "Fulton Instruments GmbH",
        "fulton-instruments.de",
        ("Jonas Keller", "Anna Vogt"),
        ("dhl",),
        "sap",
        0.4,
    ),
    _Supplier(
        "Granite Safety Products",
        "granitesafety.com",
        ("Mike Russo",),
        ("ups", "ontrac"),
        "dash",
        0.2,
    ),
    _Supplier(
        "Harbor Dental Distributors",
        "harbordental.com",
        ("Ellen Park",),
        ("fedex", "usps"),
        "hash",
        0.5,
    ),
    _Supplier(
        "Ironwood Tools Ltd",
        "ironwoodtools.co.uk",
        ("Gareth Hughes",),
        ("dhl", "ups"),
        "plain",
        0.3,
    ),
    _Supplier(
        "Juniper Biologicals",
        "juniperbio.com",
        ("Sofia Rossi", "Ben Adler"),
        ("fedex",),
        "sap",
        0.6,
    ),
    _Supplier(
        "Keystone Electrical Supply",
        "keystone-electric.com",
        ("Ray Dunn",),
        ("ups", "fedex", "usps"),
        "dash",
        0.1,
    ),
    _Supplier(
        "Lumen Optics Corp",
        "lumenoptics.com",
        ("Hana Sato",),
        ("usps", "dhl", "fedex"),
        "hash",
        0.4,
    ),
)

BUYER_DOMAIN = "lakeside-medical.com"
BUYERS = (("Jordan Reyes", "jreyes"), ("Alex Kim", "akim"), ("Purchasing", "purchasing"))
CARRIER_NAMES = {
    "ups": ("UPS", "UPS Ground", "UPS 2nd Day Air", "UPS Next Day Air"),
    "usps": ("USPS", "USPS Priority Mail", "the Postal Service", "USPS First-Class"),
    "fedex": ("FedEx", "FedEx Ground", "FedEx 2Day", "FedEx Priority Overnight"),
    "dhl": ("DHL", "DHL Express", "DHL Express Worldwide"),
    "other": ("OnTrac",),
}
_ITEMS = (
    "nitrile gloves (L)",
    "M6 hex bolts",
    "sterile swabs",
    "label printer ribbons",
    "pipette tips",
    "safety goggles",
    "copy paper",
    "LED panel",
    "dental bibs",
    "torque wrench",
    "sample vials",
    "cable ties",
    "shipping boxes",
    "face shields",
    "thermal labels",
    "calibration weights",
)
_START = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)


class _Maker:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.counter = 0

    # --- numbers -----------------------------------------------------------------------------

    def digits(self, count: int) -> str:
        return "".join(self.rng.choice("0123456789") for _ in range(count))

    def tracking(self, carrier: str) -> tuple[str, str, str]:
        """A valid number of `carrier`: (normalized, as printed, carrier label)."""
        rng = self.rng
        label = carrier
        if carrier == "ups":
            shipper = "".join(rng.choice("0123456789ABCDEFGHJKLMNPRSTUVWXY") for _ in range(6))
            body = "1Z" + shipper + rng.choice(("01", "02", "03", "12", "13", "42", "66", "90"))
            body += self.digits(7)
        elif carrier == "usps":
            kind = rng.random()
            if kind < 0.75:
                body = rng.choice(("9400", "9405", "9205", "9361", "9270", "9407")) + self.digits(
                    17
                )
            elif kind < 0.85:
                body = "420" + self.digits(5) + rng.choice(("9400", "9205")) + self.digits(17)
            elif kind < 0.92:
                body = rng.choice(("9400", "9205")) + self.digits(21)
            else:
                body = rng.choice(("LZ", "EC", "CP", "RR")) + self.digits(8)
                number = body + check_digit(body, "usps", suffix="US") + "US"
                return number, self.printed(number), "usps"
        elif carrier == "fedex":
            kind = rng.random()
            if kind < 0.65:
                body = rng.choice("2347") + self.digits(10)
            elif kind < 0.9:
                body = rng.choice(("0", "1", "6")) + self.digits(13)
            else:
                body = "9261" + self.digits(17)  # Ground Economy, delivered by USPS
        elif carrier == "dhl":
            body = self.digits(9)
        else:
            body, label = "C" + self.digits(13), "other"
        number = body + check_digit(body, label)
        return number, self.printed(number), label

    def printed(self, number: str) -> str:
        """How people print a number: mostly whole, else in groups separated by spaces or dashes."""
        rng = self.rng
        if rng.random() < 0.6 or not number[-1].isdigit():
            return number
        sep = " " if rng.random() < 0.75 else "-"
        if number.startswith("1Z"):
            parts = [number[:2], number[2:5], number[5:8], number[8:10], number[10:14], number[14:]]
        elif len(number) == 10:
            parts = [number[:2], number[2:6], number[6:]]
        else:
            parts = [number[i : i + 4] for i in range(0, len(number), 4)]
        return sep.join(parts)

    def wrong_check(self, carrier: str) -> str:
        """A number with the shape of `carrier`'s but a check digit that no carrier accepts."""
        while True:
            number, _, _ = self.tracking(carrier)
            if not number[-1].isdigit():
                continue
            wrong = number[:-1] + str((int(number[-1]) + self.rng.randrange(1, 10)) % 10)
            verdict = check(wrong)
            if verdict is not None and not verdict.checksum_valid:
                return wrong

    def phone(self) -> str:
        area, mid, last = self.rng.randrange(201, 990), self.digits(3), self.digits(4)
        return self.rng.choice(
            (
                f"({area}) {mid}-{last}",
                f"{area}-{mid}-{last}",
                f"{area}.{mid}.{last}",
                f"+1 {area} {mid} {last}",
                f"1-{area}-{mid}-{last}",
                f"{area} {mid} {last}",
                f"+44 20 {self.digits(4)} {self.digits(4)}",
                f"+49 89 {self.digits(8)}",
                f"1-800-{mid}-{last}",
                f"+1-{area}-{mid}-{last}",
                f"{area}{mid}{last}",
                f"020 {self.digits(4)} {self.digits(4)}",
                f"0161 {self.digits(3)} {self.digits(4)}",
                f"089 {self.digits(8)}",
                f"+49 (0)89 {self.digits(4)} {self.digits(4)}",
                f"0{self.digits(10)}",
            )
        )

    def po(self, style: str) -> str:
        if style == "sap":
            return "45" + self.digits(8)
        if style == "dash":
            return f"PO-2025-{self.digits(4)}"
        if style == "hash":
            return self.digits(5)
        return "LMG" + self.digits(6)

    def invoice(self) -> str:
        """An invoice number: a carrier shape with a wrong check digit, or plain digits."""
        if self.rng.random() < 0.6:
            return self.printed(
                self.wrong_check(self.rng.choice(("fedex", "dhl", "usps", "fedex")))
            )
        return self.rng.choice((f"INV-{self.digits(6)}", self.digits(8), self.digits(10)))

    # --- people and messages -----------------------------------------------------------------

    def message_id(self, domain: str) -> str:
        self.counter += 1
        return f"{self.rng.getrandbits(64):016x}.{self.counter}@{domain}"

    def signature(self, supplier: _Supplier, person: str) -> str:
        rng = self.rng
        lines = ["--" if rng.random() < 0.5 else "", person]
        if rng.random() < 0.5:
            lines.append(
                rng.choice(("Customer Service", "Shipping & Receiving", "Account Manager"))
            )
        lines.append(supplier.name if rng.random() < 0.85 else supplier.name.split(" ")[0])
        phone_label = rng.choice(("T:", "Tel", "Phone:", "Direct:", "Mobile:", "Office", ""))
        lines.append(f"{phone_label} {self.phone()}".strip())
        if rng.random() < 0.4:
            lines.append(f"Fax: {self.phone()}")
        if rng.random() < 0.5:
            lines.append(
                f"{rng.randrange(100, 9999)} Industrial Way, Suite {rng.randrange(1, 400)}, "
                f"Springfield, IL {self.digits(5)}"
            )
        if rng.random() < 0.3:
            lines.append(f"www.{supplier.domain}")
        return "\n".join(lines).strip()

    def buyer_signature(self, name: str) -> str:
        return f"{name}\nLakeside Medical Group - Purchasing\n{self.phone()}"


def _quote(text: str) -> str:
    return "\n".join(("> " + line) if line else ">" for line in text.splitlines())


def _html(text: str) -> str:
    """Plain text as the HTML a mail client would send: one <p> or <div> per paragraph."""
    paragraphs = [escape(p).replace("\n", "<br>") for p in text.split("\n\n")]
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    head = "<head><style>p{margin:0}</style></head>"
    return f'<html>{head}<body><div dir="ltr">{body}</div></body></html>'


@dataclass
class _Draft:
    sender: tuple[str, str]
    to: tuple[str, str]
    subject: str
    text: str
    html: str = ""  # an HTML body of its own (a table), else derived from text when sent as HTML
    form: str = "plain"  # plain, html, alternative


class _Conversation:
    """Builds one thread: drafts in order, each later message quoting the one before."""

    def __init__(self, maker: _Maker, supplier: _Supplier, start: datetime):
        self.m = maker
        self.rng = maker.rng
        self.supplier = supplier
        person = self.rng.choice(supplier.people)
        local = person.lower().replace(" ", ".") if person != "Shipping Desk" else "shipping"
        self.contact = (person, f"{local}@{supplier.domain}")
        buyer_name, buyer_local = self.rng.choice(BUYERS)
        self.buyer = (buyer_name, f"{buyer_local}@{BUYER_DOMAIN}")
        self.buyer_first = buyer_name.split(" ")[0] if buyer_name != "Purchasing" else "team"
        self.when = start
        self.drafts: list[_Draft] = []
        self.shipments: list[tuple[str, str]] = []
        self.po_numbers: list[str] = []

    def form(self) -> str:
        if self.rng.random() < self.supplier.html:
            return "html" if self.rng.random() < 0.5 else "alternative"
        return "plain"

    def ship(self, carrier: str | None = None) -> tuple[str, str]:
        """A new shipment: (printed number, carrier display name); labelled as expected."""
        carrier = carrier or self.rng.choice(self.supplier.carriers)
        number, printed, label = self.m.tracking("other" if carrier == "ontrac" else carrier)
        if number.startswith("9261") and label == "fedex":
            name = "FedEx Ground Economy"
        else:
            name = self.rng.choice(CARRIER_NAMES["other" if carrier == "ontrac" else carrier])
        if (number, label) not in self.shipments:
            self.shipments.append((number, label))
        return printed, name

    def add(self, sender, to, subject, text, html="", form=None):
        self.drafts.append(_Draft(sender, to, subject, text, html, form or "plain"))

    def build(self) -> list[Message]:
        messages: list[Message] = []
        texts: list[str] = []  # each message's full text, which the next one quotes
        ids: list[str] = []
        for index, draft in enumerate(self.drafts):
            if index:
                self.when += timedelta(minutes=self.rng.randrange(20, 60 * 30))
            text = draft.text
            if texts and self.rng.random() < 0.85:
                text += "\n\n" + self.quoted(messages[-1], texts[-1])
            message = _body(draft, text)
            message["From"] = f"{draft.sender[0]} <{draft.sender[1]}>"
            message["To"] = f"{draft.to[0]} <{draft.to[1]}>"
            if self.rng.random() < 0.2:
                message["Cc"] = f"receiving@{BUYER_DOMAIN}"
            message["Subject"] = draft.subject
            message["Date"] = format_datetime(self.when.astimezone(_zone(draft.sender[1])))
            message_id = self.m.message_id(draft.sender[1].rpartition("@")[2])
            message["Message-ID"] = f"<{message_id}>"
            if ids:
                message["In-Reply-To"] = f"<{ids[-1]}>"
                message["References"] = " ".join(f"<{i}>" for i in ids[-8:])
            messages.append(message)
            texts.append(text)
            ids.append(message_id)
        return messages

    def quoted(self, previous: Message, text: str) -> str:
        if self.rng.random() < 0.6:
            return f"On {previous['Date']}, {previous['From']} wrote:\n{_quote(text)}"
        return (
            f"-----Original Message-----\nFrom: {previous['From']}\nSent: {previous['Date']}\n"
            f"To: {previous['To']}\nSubject: {previous['Subject']}\n\n{text}"
        )

    # --- scenarios: each adds the drafts of one kind of thread -------------------------------

    def signed(self, text: str) -> str:
        return (
            f"{text}\n\n{self.rng.choice(('Thanks,', 'Best regards,', 'Regards,', 'Cheers,'))}\n"
            + (self.m.signature(self.supplier, self.contact[0]))
        )

    def buyer_signed(self, text: str) -> str:
        return f"{text}\n\nThanks,\n{self.m.buyer_signature(self.buyer[0])}"

    def new_po(self) -> str:
        po = self.m.po(self.supplier.po_style)
        self.po_numbers.append(po)
        return po

    def po_ref(self, po: str) -> str:
        if self.supplier.po_style == "dash":
            return po
        return self.rng.choice(
            (f"PO {po}", f"PO# {po}", f"P.O. {po}", f"purchase order {po}", f"PO #{po}")
        )

    def ship_sentence(self, po: str) -> str:
        printed, name = self.ship()
        rng = self.rng
        return rng.choice(
            (
                f"Your order {self.po_ref(po)} shipped today via {name}. "
                f"Tracking number: {printed}",
                f"{self.po_ref(po)} went out this afternoon with {name}, tracking # {printed}.",
                f"Good news, {self.po_ref(po)} has shipped! {name} tracking: {printed}",
                f"We shipped {self.po_ref(po)} on {self.when:%B %d, %Y} via {name}.\n"
                f"Tracking: {printed}",
                f"{self.po_ref(po)} is on its way. Carrier: {name}\nTracking No.: {printed}",
                f"Shipped {self.when:%m/%d/%Y} - {name} {printed} ({self.po_ref(po)})",
                f"Please find the tracking for {self.po_ref(po)} below.\n\n{name}: {printed}",
                f"Your {self.po_ref(po)} left our warehouse today. {name} waybill {printed}.",
                f"Re {po}: shipped today, {name} {printed}",
                f"Shipped {po} complete via {name}.\nTracking {printed}",
                f"Your order {po} has been shipped.\n\nShipped via: {name}\nTracking: {printed}",
            )
        )

    def distractors(self) -> str:
        """Lines with numbers that are not tracking numbers (invoice, order, account...)."""
        rng, m = self.rng, self.m
        lines = []
        for _ in range(rng.choice((0, 1, 1, 2))):
            lines.append(
                rng.choice(
                    (
                        f"Invoice #{m.invoice()} will follow by separate email.",
                        f"Our invoice number is {m.invoice()}, due net 30.",
                        f"Order number: {m.digits(rng.choice((8, 10, 12)))}",
                        f"Your customer number with us is {m.digits(rng.choice((6, 10, 11)))}.",
                        f"Account: {m.digits(10)}",
                        f"Sales order SO-{m.digits(6)}, quote Q{m.digits(5)}.",
                        f"Questions? Call our shipping line at {m.phone()}.",
                        f"Total: ${rng.randrange(50, 90000):,}.{m.digits(2)} (incl. freight)",
                        f"Lot {m.digits(10)} / exp {rng.randrange(1, 13)}/{rng.randrange(26, 30)}",
                        f"Ship to: Lakeside Medical Group, {rng.randrange(100, 999)} Lake St, "
                        f"Madison, WI {m.digits(5)}",
                        f"Reference: {m.invoice()}",
                    )
                )
            )
        return "\n".join(lines)

    def notice(self, po: str) -> None:
        """The supplier announces a shipment (one to three packages)."""
        parts = [f"Hi {self.buyer_first},", self.ship_sentence(po)]
        extra = self.rng.random()
        if extra < 0.15:
            printed, name = self.ship()
            parts.append(f"A second box went separately: {name} {printed}")
        elif extra < 0.25:
            lines = ["Tracking numbers for the remaining cartons:"]
            for n in range(self.rng.randrange(2, 4)):
                printed, name = self.ship()
                lines.append(f"  Box {n + 2}: {printed} ({name})")
            parts.append("\n".join(lines))
        elif extra < 0.32:
            carrier = self.rng.choice(self.supplier.carriers)
            lines = [f"The rest of the order went out as {carrier.upper()} packages, tracking:"]
            for _ in range(self.rng.randrange(2, 7)):
                lines.append(self.ship(carrier)[0])
            parts.append("\n".join(lines))
        distractors = self.distractors()
        if distractors:
            parts.append(distractors)
        subject = self.rng.choice(
            (
                f"Shipped: {self.po_ref(po)}",
                f"{self.po_ref(po)} shipping confirmation",
                f"Tracking for {self.po_ref(po)}",
                f"Your order has shipped ({self.po_ref(po)})",
                "Shipment notification",
                f"RE: {self.po_ref(po)}",
            )
        )
        self.add(
            self.contact, self.buyer, subject, self.signed("\n\n".join(parts)), form=self.form()
        )

    def table_notice(self, po: str) -> None:
        """An HTML-only shipping confirmation with a table, from the supplier's order system."""
        m, rng = self.m, self.rng
        rows = []
        carrier_column = rng.random() < 0.6
        carrier = rng.choice(self.supplier.carriers)
        for _ in range(rng.randrange(1, 6)):
            printed, name = self.ship(None if carrier_column else carrier)
            cells = [rng.choice(_ITEMS), str(rng.randrange(1, 40)), name, printed]
            if not carrier_column:
                del cells[2]
            rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
        heads = (
            ["Item", "Qty", "Carrier", "Tracking #"]
            if carrier_column
            else ["Item", "Qty", "Tracking #"]
        )
        carrier_name = CARRIER_NAMES["other" if carrier == "ontrac" else carrier][0]
        via = "" if carrier_column else f"<p>Shipped via {escape(carrier_name)}.</p>"
        invoice = m.invoice()
        html = (
            f"<html><body><h2>{escape(self.supplier.name)}</h2><p>Shipping confirmation</p>"
            f"<table><tr><td>Purchase order</td><td>{escape(po)}</td></tr>"
            f"<tr><td>Invoice</td><td>{escape(invoice)}</td></tr>"
            f"<tr><td>Ship date</td><td>{self.when:%Y-%m-%d}</td></tr></table>"
            f"{via}<table><tr>{''.join(f'<th>{h}</th>' for h in heads)}</tr>"
            f"{''.join(rows)}</table>"
            f"<p>Questions about this order? Call {escape(m.phone())} or reply to this email.</p>"
            f"<p style='color:#888'>{escape(self.supplier.name)} | Customer No. {m.digits(8)}</p>"
            "</body></html>"
        )
        sender = (f"{self.supplier.name} Orders", f"orders@{self.supplier.domain}")
        self.add(sender, self.buyer, f"Shipping confirmation - PO {po}", "", html=html)

    def carrier_forward(self, po: str) -> None:
        """A carrier's notification forwarded by the supplier."""
        printed, name = self.ship()
        number = self.shipments[-1][0]
        carrier = self.shipments[-1][1]
        brand = {"ups": "UPS", "usps": "USPS", "fedex": "FedEx", "dhl": "DHL", "other": "OnTrac"}[
            carrier
        ]
        notification = (
            f"---------- Forwarded message ---------\n"
            f"From: {brand} <noreply@{brand.lower()}.com>\n"
            f"Date: {self.when:%a, %b %d, %Y at %I:%M %p}\n"
            f"Subject: {brand} Update: Package Scheduled for Delivery\n\n"
            "Your package is on its way.\n\nScheduled delivery: "
            f"{(self.when + timedelta(days=3)):%A, %m/%d/%Y}\nTracking number: {printed}\n"
            f"Ship to: MADISON, WI, US\n"
            f"Reference number: {self.rng.choice((po, self.m.digits(10)))}\n"
            f"Shipper number: {self.m.digits(6)}\nNumber of packages: 1\n\n"
            f"https://www.{brand.lower()}.com/track?tracknum={number}\n\n"
            f"Questions? Call {self.m.phone()}."
        )
        intro = self.rng.choice(
            (
                "FYI - see the carrier notice below.",
                f"Forwarding the {brand} notice for {self.po_ref(po)}.",
                "See below.",
                f"{self.po_ref(po)} is scheduled for delivery, details below.",
            )
        )
        text = self.signed(f"Hi {self.buyer_first},\n\n{intro}") + "\n\n" + notification
        self.add(
            self.contact,
            self.buyer,
            f"Fwd: {brand} Update: {self.po_ref(po)}",
            text,
            form=self.form(),
        )

    def request(self, po: str) -> None:
        text = self.rng.choice(
            (
                f"Hi, could you send tracking for {self.po_ref(po)}? Our clinic is waiting on it.",
                f"Any update on {self.po_ref(po)}? It was due last week.",
                f"Hello, checking on the status of {self.po_ref(po)}. Has it shipped?",
            )
        )
        self.add(self.buyer, self.contact, f"Status of {self.po_ref(po)}", self.buyer_signed(text))

    def terse_reply(self, po: str) -> None:
        """The supplier answers a request for tracking with little more than the number."""
        printed, name = self.ship()
        text = self.rng.choice(
            (
                f"Here you go: {printed}",
                f"{printed}",
                f"Sure - {printed}",
                f"It went out yesterday, {printed}.",
                f"{name} {printed}",
                f"Hi {self.buyer_first}, it's {printed}. Let me know if it doesn't show up.",
            )
        )
        subject = "RE: " + self.drafts[-1].subject
        self.add(self.contact, self.buyer, subject, self.signed(text), form=self.form())

    def thanks(self) -> None:
        text = self.rng.choice(
            (
                "Thanks, got it.",
                "Great, thank you!",
                "Received, thanks.",
                f"Thanks! Forwarding to receiving. Their line is {self.m.phone()}.",
            )
        )
        subject = "RE: " + self.drafts[-1].subject.removeprefix("RE: ")
        self.add(self.buyer, self.contact, subject, self.buyer_signed(text))

    def correction(self, po: str) -> None:
        """A mistyped number (its check digit fails), then the right one."""
        carrier = self.rng.choice(self.supplier.carriers)
        carrier = "other" if carrier == "ontrac" else carrier
        wrong = self.m.printed(self.m.wrong_check(carrier))
        self.add(
            self.contact,
            self.buyer,
            f"Tracking for {self.po_ref(po)}",
            self.signed(f"Hi {self.buyer_first},\n\nTracking for {self.po_ref(po)}: {wrong}"),
            form=self.form(),
        )
        self.add(
            self.buyer,
            self.contact,
            f"RE: Tracking for {self.po_ref(po)}",
            self.buyer_signed(f"The carrier site says {wrong} is not a valid tracking number?"),
        )
        printed, name = self.ship(carrier if carrier != "other" else "ontrac")
        self.add(
            self.contact,
            self.buyer,
            f"RE: Tracking for {self.po_ref(po)}",
            self.signed(f"Sorry, typo on my side. The right {name} number is {printed}."),
            form=self.form(),
        )

    def no_tracking(self, po: str) -> None:
        """Threads without a tracking number: acknowledgements, invoices, backorders, quotes."""
        m, rng = self.m, self.rng
        kind = rng.randrange(5)
        if kind == 0:
            text = (
                f"Hi {self.buyer_first},\n\nThank you for {self.po_ref(po)}. "
                f"Estimated ship date is {(self.when + timedelta(days=7)):%m/%d/%Y}; "
                "we will send tracking once it ships.\n"
                f"Sales order: {m.digits(10)}"
            )
            subject = f"Order acknowledgement {self.po_ref(po)}"
        elif kind == 1:
            text = (
                f"Please find attached invoice {m.invoice()} for {self.po_ref(po)}.\n"
                f"Amount due: ${rng.randrange(100, 20000):,}.{m.digits(2)}\nRemit to account "
                f"{m.digits(10)}, routing {m.digits(9)}."
            )
            subject = f"Invoice for {self.po_ref(po)}"
        elif kind == 2:
            text = (
                f"Item {rng.choice(_ITEMS)} on {self.po_ref(po)} is backordered until "
                f"{(self.when + timedelta(days=20)):%B %d}. The rest ships next week.\n"
                f"Questions: {m.phone()}"
            )
            subject = f"Backorder notice {self.po_ref(po)}"
        elif kind == 3:
            text = (
                f"Here is the quote you asked for: Q-{m.digits(5)}, valid 30 days.\n"
                f"Part {m.digits(10)} x 40, part {m.digits(12)} x 10.\nCall me at {m.phone()}."
            )
            subject = "Quote request"
        else:
            text = (
                f"Could we move our call to Thursday? Dial-in {m.phone()}, "
                f"access code {m.digits(9)}#."
            )
            subject = "Call this week"
        self.add(self.contact, self.buyer, subject, self.signed(text), form=self.form())
        if rng.random() < 0.5:
            self.thanks()

    def compose(self) -> None:
        """One of the thread shapes, 1 to 4 messages."""
        po = self.new_po()
        rng = self.rng
        roll = rng.random()
        if roll < 0.3:
            self.notice(po)
        elif roll < 0.45:
            self.request(po)
            self.notice(po)
            if rng.random() < 0.6:
                self.thanks()
        elif roll < 0.57:
            self.table_notice(po)
            if rng.random() < 0.4:
                self.thanks()
        elif roll < 0.69:
            self.carrier_forward(po)
            if rng.random() < 0.5:
                self.thanks()
        elif roll < 0.76:
            self.correction(po)
            if rng.random() < 0.5:
                self.thanks()
        elif roll < 0.82:
            self.notice(po)
            self.thanks()
            self.notice(self.new_po())  # the next PO in the same thread
        elif roll < 0.87:
            self.request(po)
            self.terse_reply(po)
            if rng.random() < 0.5:
                self.thanks()
        else:
            self.no_tracking(po)


def _part(text: str, subtype: str) -> MIMEText:
    # 7bit when it can be, as most mail is; utf-8 otherwise.
    return MIMEText(text, subtype, "us-ascii" if text.isascii() else "utf-8")


def _body(draft: _Draft, text: str) -> Message:
    """The message's body parts: its own HTML, text as HTML only, both as alternatives, or text.

    Built with the email.mime classes (compat32), several times quicker than EmailMessage, so a
    benchmark mailbox of thousands of threads is written in a second or two.
    """
    if draft.html:
        return _part(_lines(draft.html), "html")
    if draft.form == "html":
        return _part(_lines(_html(text)), "html")
    if draft.form == "alternative":
        message = MIMEMultipart("alternative")
        message.attach(_part(text, "plain"))
        message.attach(_part(_lines(_html(text)), "html"))
        return message
    return _part(text, "plain")


def _lines(html: str) -> str:
    """Markup broken after paragraphs and rows, as mailers send it (7bit lines stay short)."""
    for tag in ("</p>", "</tr>", "</table>", "</h2>", "<br>"):
        html = html.replace(tag, tag + "\n")
    return html


def _zone(address: str) -> timezone:
    if address.endswith(".de"):
        return timezone(timedelta(hours=1))
    if address.endswith(".uk"):
        return UTC
    return timezone(timedelta(hours=-5))


def generate(count: int, seed: int = 1) -> list[Conversation]:
    """`count` labelled threads made from `seed` (the same seed makes the same mailbox)."""
    maker = _Maker(seed)
    result = []
    when = _START
    for _ in range(count):
        when += timedelta(minutes=maker.rng.randrange(5, 240))
        thread = _Conversation(maker, maker.rng.choice(SUPPLIERS), when)
        thread.compose()
        messages = thread.build()
        root_id = messages[0]["Message-ID"].strip("<>")
        result.append(
            Conversation(
                root_id, thread.supplier.name, messages, thread.shipments, thread.po_numbers
            )
        )
    return result


def write_mbox(path: str | Path, threads: list[Conversation]) -> Path:
    """Write the threads' messages to an .mbox file (replacing it), in the order they were sent."""
    path = Path(path)
    path.unlink(missing_ok=True)
    box = mailbox.mbox(path, create=True)
    box.lock()
    try:
        for thread in threads:
            for message in thread.messages:
                box.add(message)
        box.flush()
    finally:
        box.unlock()
        box.close()
    return path


def write_demo_mailbox(path: str | Path, conversations: int = 60, seed: int = 1) -> Path:
    """Write the demo mailbox: `conversations` supplier threads as an .mbox file at `path`."""
    return write_mbox(path, generate(conversations, seed))
