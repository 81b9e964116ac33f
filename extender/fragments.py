"""The NodeNames-mode prioritize reply, joined from per-node JSON pieces the cache keeps.

Measured at 5,000 nodes of which 4,700 passed filter: building 4,700 `{"Host":...,"Score":...}` dicts for
orjson took 1.7-2.5 ms; joining bytes found by a C-level lookup per node takes 0.35 ms. Each node's piece is
encoded from its memoised verdict once, and `ClusterView` drops the piece together with the verdict (the node,
its pods or the shape changed), so a piece is never older than the verdict it spells.

(The same trick for filter's FailedNodes was measured too and did not pay: orjson encodes one dict of reasons
as fast as the pieces join, and splitting passed from failed costs the same either way.)

The reply is byte-for-byte what `wire.encode_priorities` gives for the same verdicts (the tests hold it to it):
orjson writes objects with no spaces, keys in insertion order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import filterfalse

import orjson

from extender.fit import Verdict

__all__ = ["encode_priority_list", "join_pieces", "score_piece"]

Pieces = dict[str, bytes]  # node name -> its JSON piece, for one (request shape, scored)
Encode = Callable[[str, Verdict], bytes]


def score_piece(name: str, verdict: Verdict) -> bytes:
    """`{"Host":"node","Score":n}`: one HostPriority."""
    return orjson.dumps({"Host": name, "Score": verdict.score})


def join_pieces(pieces: Pieces, names: Sequence[str], verdicts: Sequence[Verdict], encode: Encode) -> bytes:
    """The comma-joined pieces of `names`, whose verdicts (this request's, aligned) are `verdicts`.

    A node named twice in one request has one memo entry, hence one verdict and one piece."""
    # Two C-level passes; Python runs only for nodes whose verdict is new since the last request.
    missing = set(filterfalse(pieces.__contains__, names))
    if missing:
        for name, verdict in zip(names, verdicts, strict=True):
            if name in missing:
                pieces[name] = encode(name, verdict)
    return b",".join(map(pieces.__getitem__, names))


def encode_priority_list(scores: bytes) -> bytes:
    """HostPriorityList from joined `score_piece`s."""
    return b"[" + scores + b"]"
