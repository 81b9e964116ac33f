"""The range-list codec: `frozenset({0, 1, 2, 3, 8})` <-> `"0-3,8"`.

Encoding is canonical (ascending, merged runs). Decoding is strict about syntax but accepts unsorted or
adjacent runs, and refuses IDs at or above `limit` so that a garbled `"0-999999999"` cannot exhaust memory.
It also bounds the text before reading it: no ID has more digits than `limit`, and no list is longer than a
list of `limit` IDs can be, so a megabyte of digits costs a length check, not a big-integer parse.
"""

from __future__ import annotations

from collections.abc import Iterable

from neuronalloc.text import quote

DEFAULT_ID_LIMIT = 4096


class RangeListError(ValueError):
    """A range list that is not of the form `a`, `a-b`, joined by commas."""


def runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive IDs as inclusive (first, last) pairs, ascending."""
    result: list[tuple[int, int]] = []
    for value in sorted(set(ids)):
        if result and value == result[-1][1] + 1:
            result[-1] = (result[-1][0], value)
        else:
            result.append((value, value))
    return result


def encode_ranges(ids: Iterable[int]) -> str:
    parts = []
    for first, last in runs(ids):
        if first < 0:
            raise ValueError(f"IDs must be non-negative, got {first}")
        parts.append(str(first) if first == last else f"{first}-{last}")
    return ",".join(parts)


def _parse_id(text: str, whole: str, limit: int) -> int:
    if not text.isascii() or not text.isdigit():
        raise RangeListError(f"{quote(whole)}: {quote(text, 40)} is not a decimal ID")
    if len(text) > len(str(limit)):
        raise RangeListError(f"{quote(whole)}: ID {quote(text, 40)} is out of range (limit {limit})")
    return int(text)


def max_text_length(limit: int) -> int:
    """The longest range list of IDs below `limit` worth reading: every other ID, each with its comma, at the
    widest ID (non-canonical lists of the same IDs may repeat themselves, but not by megabytes)."""
    return 2 * limit * (len(str(limit)) + 1) + 16


def decode_ranges(text: str, *, limit: int = DEFAULT_ID_LIMIT) -> frozenset[int]:
    """The IDs `text` lists. Raises RangeListError, and nothing else, for any other input."""
    if not isinstance(text, str):
        raise RangeListError(f"a range list is a string, got {type(text).__name__}")
    if text == "":
        return frozenset()
    if len(text) > max_text_length(limit):
        raise RangeListError(f"{quote(text)}: {len(text)} characters is too long for IDs below {limit}")
    ids: set[int] = set()
    for part in text.split(","):
        first_text, dash, last_text = part.partition("-")
        first = _parse_id(first_text, text, limit)
        last = _parse_id(last_text, text, limit) if dash else first
        if last < first:
            raise RangeListError(f"{quote(text)}: run {quote(part, 40)} ends before it starts")
        if last >= limit:
            raise RangeListError(f"{quote(text)}: ID {last} is out of range (limit {limit})")
        ids.update(range(first, last + 1))
    return frozenset(ids)
