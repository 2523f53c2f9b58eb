"""Template filters of the scanner pages."""

from __future__ import annotations

import re

from django import template
from django.utils.html import conditional_escape, format_html
from django.utils.safestring import SafeString, mark_safe

register = template.Library()


@register.filter
def highlight(text: str, numbers: list[str]) -> SafeString:
    """The text, escaped, with each tracking number marked, as written (spaces, dashes)."""
    text = str(text or "")
    patterns = [r"[\s-]?".join(re.escape(c) for c in n) for n in numbers if n]
    if not patterns:
        return conditional_escape(text)
    found = re.compile("|".join(sorted(patterns, key=len, reverse=True)), re.IGNORECASE)
    parts, last = [], 0
    for match in found.finditer(text):
        parts.append(conditional_escape(text[last : match.start()]))
        parts.append(format_html('<mark class="tracking">{}</mark>', match.group(0)))
        last = match.end()
    parts.append(conditional_escape(text[last:]))
    return mark_safe("".join(parts))
