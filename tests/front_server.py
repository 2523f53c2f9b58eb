"""A Front-compatible HTTP server on 127.0.0.1, for tests and benchmarks.

It serves an inbox of conversations the way Front's Core API does: the conversation search
(`GET /conversations/search/inbox:ID after:TS`) and each conversation's messages, newest
first, both paginated through `_pagination.next` (a full URL with a `page_token`). It sends
`x-ratelimit-remaining` / `x-ratelimit-reset`, and misbehaves on purpose like the OpenAI
server (tests/openai_server.py): 429 with Retry-After, 500, bodies that are not JSON, no
answer in time.

    inbox = [FrontConversation("cnv_1", "Your order shipped", [FrontMail(...), ...]), ...]
    with FrontServer(inbox, inbox_id="inb_1", page_size=10) as server:
        settings.FRONT_BASE_URL = server.base_url
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qs, unquote, urlsplit

from tests.openai_server import FakeService, JSONHandler


@dataclass
class FrontMail:
    id: str
    sender_name: str
    sender_address: str
    sent_at: datetime
    subject: str
    text: str
    html_only: bool = False  # send only `body` (HTML), as some channels do


@dataclass
class FrontConversation:
    id: str
    subject: str
    messages: list[FrontMail] = field(default_factory=list)

    @property
    def last_activity(self) -> float:
        return max(m.sent_at.timestamp() for m in self.messages)


class FrontServer(FakeService):
    def __init__(
        self,
        conversations: list[FrontConversation],
        inbox_id: str = "inb_test",
        page_size: int = 25,
        message_page_size: int = 2,
        remaining: int | None = None,
        **kw,
    ):
        super().__init__(_handler(), **kw)
        self.conversations = conversations
        self.inbox_id = inbox_id
        self.page_size = page_size
        self.message_page_size = message_page_size
        # With a number, every answer says this many requests remain, reset in 1 s.
        self.remaining = remaining

    def search(self, query: str) -> list[dict]:
        """The conversations a search query finds, by last activity, newest first."""
        inbox, after = None, None
        for term in query.split():
            name, _, value = term.partition(":")
            if name == "inbox":
                inbox = value
            elif name == "after":
                after = float(value)
        if inbox != self.inbox_id:
            return []
        found = [c for c in self.conversations if after is None or c.last_activity > after]
        found.sort(key=lambda c: c.last_activity, reverse=True)
        return [conversation_json(self.base_url, c) for c in found]

    def messages(self, conversation_id: str) -> list[dict] | None:
        for c in self.conversations:
            if c.id == conversation_id:
                ordered = sorted(c.messages, key=lambda m: m.sent_at, reverse=True)
                return [message_json(self.base_url, c, m) for m in ordered]
        return None


def conversation_json(base: str, c: FrontConversation) -> dict:
    first = min(c.messages, key=lambda m: m.sent_at)
    return {
        "_links": {
            "self": f"{base}/conversations/{c.id}",
            "related": {"messages": f"{base}/conversations/{c.id}/messages"},
        },
        "id": c.id,
        "subject": c.subject,
        "status": "archived",
        "assignee": None,
        "recipient": {"handle": first.sender_address, "name": first.sender_name, "role": "from"},
        "tags": [],
        "links": [],
        "custom_fields": {},
        "created_at": first.sent_at.timestamp(),
        "waiting_since": c.last_activity,
        "is_private": False,
        "scheduled_reminders": [],
        "metadata": {},
    }


def message_json(base: str, c: FrontConversation, m: FrontMail) -> dict:
    body = "<div>" + html.escape(m.text).replace("\n", "<br>") + "</div>"
    return {
        "_links": {"self": f"{base}/messages/{m.id}", "related": {"conversation": c.id}},
        "id": m.id,
        "type": "email",
        "is_inbound": True,
        "is_draft": False,
        "created_at": m.sent_at.timestamp(),
        "subject": m.subject,
        "blurb": m.text[:80],
        "author": None,
        "recipients": [
            {"handle": m.sender_address, "name": m.sender_name, "role": "from"},
            {"handle": "support@example.com", "name": "Support", "role": "to"},
        ],
        "body": body,
        "text": None if m.html_only else m.text,
        "attachments": [],
        "metadata": {},
    }


def _handler() -> type[JSONHandler]:
    class Handler(JSONHandler):
        service: FrontServer

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            request = self.service.arrive({"path": url.path, "query": query}, at=self.arrived)
            self.service.wait(request)
            if self.headers.get("authorization", "") in ("", "Bearer "):
                request.status = 401
                self.send_json(401, {"_error": {"status": 401, "title": "Unauthenticated"}})
                return
            if self.send_fault(request, {"_error": {"status": 429, "title": "Too Many Requests"}}):
                return
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if parts[:2] == ["conversations", "search"] and len(parts) == 3:
                results = self.service.search(parts[2])
                size = min(int(query.get("limit", ["25"])[0]), self.service.page_size)
            elif len(parts) == 3 and parts[0] == "conversations" and parts[2] == "messages":
                results = self.service.messages(parts[1])
                size = self.service.message_page_size
            else:
                results = None
            if results is None:
                request.status = 404
                self.send_json(404, {"_error": {"status": 404, "title": "Not found"}})
                return
            start = int(query.get("page_token", ["0"])[0])
            page = results[start : start + size]
            more = start + size < len(results)
            next_url = (
                f"{self.service.base_url}{url.path}?limit={size}&page_token={start + size}"
                if more
                else None
            )
            request.status = 200
            self.send_json(
                200,
                {
                    "_pagination": {"next": next_url},
                    "_links": {"self": f"{self.service.base_url}{self.path}"},
                    "_results": page,
                    "_total": len(results),
                },
                self.budget_headers(),
            )

        def budget_headers(self) -> dict:
            import time

            if self.service.remaining is None:
                return {}
            return {
                "x-ratelimit-limit": "50",
                "x-ratelimit-remaining": str(self.service.remaining),
                "x-ratelimit-reset": f"{time.time() + 1:.3f}",
            }

    return Handler
