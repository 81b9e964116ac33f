"""Rate-limited logging of a repeated event: the first occurrence of a key is logged at once, later ones are
counted and logged as one line with the count at most once per interval. Keys must come from a bounded set
(device indices, reasons): the tally keeps one entry per key.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Entry:
    logged_at: float
    pending: int = 0
    fields: dict[str, Any] = field(default_factory=dict)  # the latest occurrence's fields


class LogTally:
    def __init__(self, interval: float, emit: Callable[[Hashable, int, dict[str, Any]], None]) -> None:
        self._interval = interval
        self._emit = emit  # (key, count, fields of the latest occurrence)
        self._entries: dict[Hashable, _Entry] = {}

    def add(self, key: Hashable, now: float, **fields: Any) -> None:
        entry = self._entries.get(key)
        if entry is None or (entry.pending == 0 and now - entry.logged_at >= self._interval):
            self._entries[key] = _Entry(logged_at=now)
            self._emit(key, 1, fields)
            return
        entry.pending += 1
        entry.fields = fields

    def flush(self, now: float) -> None:
        """Log what was counted for keys whose interval has passed."""
        for key, entry in self._entries.items():
            if entry.pending and now - entry.logged_at >= self._interval:
                self._emit(key, entry.pending, entry.fields)
                entry.logged_at, entry.pending, entry.fields = now, 0, {}
