"""The Front API: an inbox's conversations and their messages, paced by the `front` limiter.

Every request acquires the shared `front` limiter first. Front's own budget is honoured
too: a response saying `x-ratelimit-remaining: 0` pauses the limiter until
`x-ratelimit-reset`, and a 429 pauses it for its `Retry-After` (RateLimited). 5xx,
timeouts and bodies that are not JSON are transient; other 4xx are permanent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import httpx
from django.conf import settings

from project.kinds import PermanentError, RateLimited, TransientError
from project.ratelimit import get_limiter
from scanner.mailbox import html_to_text

LIMITER = "front"
PAGE_SIZE = 100  # the most Front returns per page


@dataclass
class FrontMessage:
    external_id: str
    sender_name: str
    sender_address: str
    sent_at: datetime | None
    subject: str
    text: str


def configured() -> bool:
    return bool(settings.FRONT_API_TOKEN)


class FrontClient:
    """One HTTP connection pool to Front; make one per thread (httpx clients are not shared)."""

    def __init__(self) -> None:
        if not settings.FRONT_API_TOKEN:
            raise PermanentError("FRONT_API_TOKEN is not set")
        self.http = httpx.Client(
            base_url=settings.FRONT_BASE_URL,
            headers={
                "Authorization": f"Bearer {settings.FRONT_API_TOKEN}",
                "Accept": "application/json",
            },
            timeout=settings.FRONT_TIMEOUT,
        )
        self.limiter = get_limiter(LIMITER)

    def close(self) -> None:
        self.http.close()

    def get(self, url: str, params: dict | None = None) -> dict[str, Any]:
        """One GET (a path, or a full `_pagination.next` URL), as JSON."""
        self.limiter.acquire()
        response = self.http.get(url, params=params)
        self._obey_budget(response)
        if response.status_code == 429:
            raise RateLimited(
                f"Front rate limit on {response.url.path}",
                retry_after=_number(response.headers.get("retry-after")),
                limiter=LIMITER,
            )
        if response.status_code >= 500:
            raise TransientError(f"Front answered {response.status_code} on {response.url.path}")
        if response.status_code >= 400:
            raise PermanentError(
                f"Front answered {response.status_code} on {response.url.path}: "
                f"{response.text[:200]}"
            )
        try:
            return response.json()
        except ValueError:
            raise TransientError(f"Front's answer on {response.url.path} is not JSON") from None

    def get_patiently(self, url: str, attempts: int = 6) -> dict[str, Any]:
        """GET with retries of transient failures, for the planner (it has no engine retry)."""
        for attempt in range(1, attempts + 1):
            try:
                return self.get(url)
            except (TransientError, httpx.TransportError) as exc:
                if attempt == attempts:
                    raise
                wait = getattr(exc, "retry_after", None) or min(2**attempt * 0.25, 10)
                time.sleep(min(wait, settings.BATCH_MAX_RETRY_AFTER))
        raise AssertionError("unreachable")

    def search_url(self, inbox_id: str, after: date | None) -> str:
        """The first page of an inbox's conversations with activity after a date."""
        query = f"inbox:{inbox_id}"
        if after:
            stamp = int(datetime.combine(after, datetime.min.time(), tzinfo=UTC).timestamp())
            query += f" after:{stamp}"
        # Reference: https://dev.frontapp.com/reference/search-conversations
        return f"/conversations/search/{quote(query, safe='')}?limit={PAGE_SIZE}"

    def conversation_pages(self, url: str) -> Iterator[tuple[list[dict], str]]:
        """Pages of conversations from `url` on: (conversations, the next page's URL or "")."""
        while url:
            page = self.get_patiently(url)
            url = (page.get("_pagination") or {}).get("next") or ""
            yield page.get("_results") or [], url

    def messages(self, conversation_id: str) -> list[FrontMessage]:
        """Every message of a conversation, oldest first (Front lists them newest first)."""
        # Reference: https://dev.frontapp.com/reference/list-conversation-messages
        url = f"/conversations/{quote(conversation_id, safe='')}/messages?limit={PAGE_SIZE}"
        found: list[FrontMessage] = []
        while url:
            page = self.get(url)
            found.extend(message(m) for m in page.get("_results") or [])
            url = (page.get("_pagination") or {}).get("next") or ""
        found.sort(key=lambda m: (m.sent_at or datetime.min.replace(tzinfo=UTC), m.external_id))
        return found

    def _obey_budget(self, response: httpx.Response) -> None:
        """Front's own count: at 0 remaining, pause everyone until its reset time."""
        remaining = _number(response.headers.get("x-ratelimit-remaining"))
        reset = _number(response.headers.get("x-ratelimit-reset"))
        if remaining is not None and remaining <= 0 and reset is not None:
            wait = reset - time.time()
            if 0 < wait <= settings.BATCH_MAX_RETRY_AFTER:
                self.limiter.pause(wait)


def conversation_fields(data: dict) -> dict[str, Any]:
    """A Front conversation as Conversation fields."""
    recipient = data.get("recipient") or {}
    handle = (recipient.get("handle") or "").lower()
    return {
        "subject": (data.get("subject") or "")[:300],
        "participants": [handle] if handle else [],
        "last_message_at": _time(data.get("last_message", {}).get("created_at"))
        if isinstance(data.get("last_message"), dict)
        else None,
    }


def message(data: dict) -> FrontMessage:
    sender = next((r for r in data.get("recipients") or [] if r.get("role") == "from"), {})
    author = data.get("author") or {}
    name = sender.get("name") or " ".join(
        part for part in (author.get("first_name"), author.get("last_name")) if part
    )
    text = data.get("text")
    if text is None:
        text = html_to_text(data.get("body") or "")
    return FrontMessage(
        external_id=str(data.get("id") or ""),
        sender_name=(name or "")[:200],
        sender_address=(sender.get("handle") or author.get("email") or "").lower()[:254],
        sent_at=_time(data.get("created_at")),
        subject=(data.get("subject") or "")[:300],
        text=text,
    )


def _time(value: Any) -> datetime | None:
    number = _number(value)
    return datetime.fromtimestamp(number, UTC) if number is not None else None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is no number
