"""Django's EmailMessage, built with headers parsed the standard way but more cheaply.

The standard library's header registry (email.headerregistry) parses every header value
into a tree of tokens when it is set, and folds the tree back into text when the message is
written. For the plain values most of a product's emails carry (an ASCII subject, bare
addresses, the Message-ID, the date), the written text is the value itself (the date's
standard format). Building an email that way cost a brief about a millisecond, more than
any other step of it but the model's call.

Here a plain value is kept as it is (PlainHeader), and parsed only if something asks for
its parts; any other value, or one a line cannot hold, gets the standard treatment. The
message, to the byte, is the one Django builds (tests/test_mail.py).
"""

from __future__ import annotations

import email.policy
import functools
import re
import threading
from datetime import datetime
from email.headerregistry import (
    AddressHeader,
    BaseHeader,
    ContentTransferEncodingHeader,
    ContentTypeHeader,
    DateHeader,
    HeaderRegistry,
    MessageIDHeader,
    MIMEVersionHeader,
    UnstructuredHeader,
)
from email.utils import format_datetime

from django.core import mail

ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
DOMAIN = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
ADDRESS = rf"{ATOM}(?:\.{ATOM})*@{DOMAIN}"

# The values each kind of header writes unchanged (checked against the standard registry
# in tests/test_mail.py); a subclass matches its first base listed here.
PLAIN = {
    # Printable ASCII words, single spaces; no encoded word ("=?"), which is decoded.
    UnstructuredHeader: re.compile(r"(?!.*=\?)[!-~]+(?: [!-~]+)*"),
    # Bare addresses: a display name may need quoting or encoding.
    AddressHeader: re.compile(rf"{ADDRESS}(?:, {ADDRESS})*"),
    MessageIDHeader: re.compile(rf"<{ADDRESS}>"),
    MIMEVersionHeader: re.compile(r"1\.0"),
    ContentTransferEncodingHeader: re.compile(r"7bit|8bit|quoted-printable|base64"),
    ContentTypeHeader: re.compile(r'text/plain(?:; charset="utf-8")?'),
}


class PlainHeader(str):
    """A header value written as it is; its parsed form is made if anything asks for it
    (`.addresses`, `.params`, ...)."""

    def __new__(cls, name: str, value: str, parsed_class: type[BaseHeader], source=None):
        self = super().__new__(cls, value)
        self.name = name
        self.parsed_class = parsed_class
        self.source = source  # what was set, when not this text (a datetime)
        return self

    def parsed(self) -> BaseHeader:
        if "_parsed" not in self.__dict__:
            source = str(self) if self.source is None else self.source
            self.__dict__["_parsed"] = self.parsed_class(self.name, source)
        return self.__dict__["_parsed"]

    def __getattr__(self, attribute: str):
        if attribute.startswith("__") or attribute == "_parsed":
            raise AttributeError(attribute)
        return getattr(self.parsed(), attribute)

    def fold(self, *, policy: email.policy.Policy) -> str:
        limit = policy.max_line_length
        if limit and len(self.name) + 2 + len(self) > limit:
            return self.parsed().fold(policy=policy)
        return f"{self.name}: {self}{policy.linesep}"


class PlainHeaderRegistry(HeaderRegistry):
    """The standard registry, keeping plain values as they are (PlainHeader) and making
    the class for each header name once (the standard one makes a class per header set)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.made: dict[str, type] = {}
        self.lock = threading.Lock()

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        made = self.made.get(key)
        if made is None:
            with self.lock:
                made = self.made.setdefault(key, super().__getitem__(name))
        return made

    def __call__(self, name: str, value) -> BaseHeader | PlainHeader:
        header_class = self[name]
        if type(value) is datetime and value.tzinfo and issubclass(header_class, DateHeader):
            return PlainHeader(name, format_datetime(value), header_class, value)  # Django's
        if type(value) is str:
            plain = plain_pattern(header_class)
            if plain is not None and plain.fullmatch(value):
                return PlainHeader(name, value, header_class)
        return header_class(name, value)


@functools.cache
def plain_pattern(header_class: type) -> re.Pattern | None:
    """The PLAIN pattern of a header class (a registry makes one per header name), if any."""
    return next((plain for base, plain in PLAIN.items() if issubclass(header_class, base)), None)


@functools.cache
def with_plain_headers(policy: email.policy.Policy) -> email.policy.Policy:
    """`policy`, with the registry above if it had the standard one."""
    factory = getattr(policy, "header_factory", None)
    if type(factory) is not HeaderRegistry:
        return policy
    return policy.clone(header_factory=PlainHeaderRegistry())


class EmailMessage(mail.EmailMessage):
    def message(self, *, policy=email.policy.default):
        return super().message(policy=with_plain_headers(policy))


def warm_up() -> None:
    """Build one message, as a worker starts: its first emails then find the header classes
    made and the host's name (the Message-ID's domain, a name lookup) known."""
    EmailMessage("warm-up", "warm-up", to=["warm-up@example.com"]).message().as_bytes()
