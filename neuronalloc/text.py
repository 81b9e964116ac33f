"""Bounded text for error messages: a garbled input may be megabytes, and an error quoting it must not be."""

from __future__ import annotations

MAX_MESSAGE = 600  # no error message built by a decoder is longer than this
MAX_QUOTE = 120  # how much of an offending input a message quotes


def shorten(text: str, limit: int = MAX_QUOTE) -> str:
    """`text` if it fits in `limit` characters, else its head and tail around a note of what was cut."""
    if len(text) <= limit:
        return text
    note = f"...({len(text) - limit} chars cut)..."
    keep = max(limit - len(note), 2)
    head = keep - keep // 3
    return text[:head] + note + text[len(text) - (keep - head) :]


def quote(value: object, limit: int = MAX_QUOTE) -> str:
    """`repr(value)`, shortened: for messages that show what was received."""
    # Shorten before repr (a huge input is not copied), and after it (escapes can quadruple the length).
    inner = shorten(value, limit) if isinstance(value, str) else value
    return shorten(repr(inner), limit)
