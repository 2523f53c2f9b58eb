"""Template filters for job pages: durations, rates, progress bar widths."""

from __future__ import annotations

from django import template

register = template.Library()

DASH = "—"


@register.filter
def duration(seconds: float | None) -> str:
    """`41.2 s`, `3 min 5 s`, `2 h 5 min`."""
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


@register.filter
def ms(milliseconds: float | None) -> str:
    """A latency: `152 ms`, `4.5 ms`, or a duration past one second."""
    if milliseconds is None:
        return DASH
    if milliseconds < 10:
        return f"{milliseconds:.1f} ms"
    if milliseconds < 1000:
        return f"{milliseconds:.0f} ms"
    return duration(milliseconds / 1000)


@register.filter
def rate(per_second: float | None) -> str:
    """Items per second: `218/s`, `3.4/s`."""
    if per_second is None:
        return DASH
    if per_second < 10:
        return f"{per_second:.1f}/s"
    return f"{per_second:,.0f}/s"


@register.filter
def percent_of(part: int, whole: int) -> str:
    """`part` as a percentage of `whole`, for a progress bar segment's CSS width."""
    return f"{100 * part / whole:.2f}" if whole else "0"


@register.filter
def pairs(mapping: dict | None) -> list[tuple]:
    """A dict's items sorted by key.

    `{% for k, v in d.items %}` would look up a key named "items" first, and the `sleep`
    kind has a parameter of that name.
    """
    return sorted((mapping or {}).items())
