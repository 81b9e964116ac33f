"""Why a request cannot be met, in words that name the IDs and the rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RefusalKind = Literal["unresolvable", "no_block", "invalid"]


@dataclass(frozen=True)
class Refusal:
    """A reasoned "no".

    kind:
      - "unresolvable": no free state of this node could ever meet the request (a size the rule forbids,
        or more than the node has). Preemption cannot help.
      - "no_block": the node could meet it, but not with what is free now (too full or too fragmented).
      - "invalid": the request itself is malformed (unknown IDs, duplicates, a must-include outside the size).
    """

    kind: RefusalKind
    rule: str
    message: str

    def __str__(self) -> str:
        return self.message
