"""Repeated-error logging with a rate limit: the first event of a kind is logged, then at most one per interval,
each carrying how many were suppressed since the last one logged.

A flood (an accept loop out of file descriptors, a client sending garbage in a loop, a watch serving the same
poisoned object) must not turn into a flood of log lines: every event is still counted in a metric, and the log
keeps one line per kind per interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

__all__ = ["Throttle"]


class Throttle:
    """Which events of each kind to log. Thread-safe: reflector threads and the event loop share one."""

    def __init__(
        self, interval: float = 10.0, *, clock: Callable[[], float] = time.monotonic, max_kinds: int = 1024
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._max_kinds = max_kinds
        self._next: dict[Hashable, float] = {}  # kind -> when the next line may be logged
        self._suppressed: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def admit(self, kind: Hashable) -> int | None:
        """None: do not log this one (it is counted). Else log it, with the returned count of events of this
        kind suppressed since the last line (0 for the first)."""
        now = self._clock()
        with self._lock:
            due = self._next.get(kind)
            if due is not None and now < due:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return None
            if due is None and len(self._next) >= self._max_kinds:
                # Bounded memory: forget the kinds whose interval has passed (they would log at once anyway).
                for old in [k for k, t in self._next.items() if t <= now]:
                    del self._next[old]
                    self._suppressed.pop(old, None)
                if len(self._next) >= self._max_kinds:
                    return None
            self._next[kind] = now + self._interval
            return self._suppressed.pop(kind, 0)
