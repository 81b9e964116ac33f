"""How much memory a request may make the extender hold: body caps by verb and mode, and one budget for every body
in flight. Pure: the server asks, this answers.

A body costs more than its bytes once decoded: orjson turns `{}` (2 bytes) into a 64-byte dict, so a 4 MiB body
of empty objects is 90 MiB of Python objects, and a 5,000-node Nodes-mode body (about 50 MB) about 220 MB.
What is reserved for a request is therefore an estimate of its decoded size, computed from its structure before
it is decoded (`decoded_estimate`): it counts the bytes that open objects, arrays and strings and that separate
members, each at what CPython makes of it. It is never below what decoding really takes (a property test
measures it with tracemalloc) and about twice that for real Kubernetes objects, whose repeated keys orjson
shares. The budget is taken when the body starts to arrive and given back when the reply has been written.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BIND_BODY_BYTES", "BodyCaps", "Budget", "Reservation", "decoded_estimate"]

# ExtenderBindingArgs is four short strings: a few hundred bytes. 64 KiB leaves room for any client's formatting.
BIND_BODY_BYTES = 64 * 1024

# CPython 3.11 on 64-bit, as orjson builds objects (measured with tracemalloc; rounded up):
_BASE = 64  # a top-level scalar and the list or dict holding everything
_PER_OBJECT = 160  # `{`: a dict with its first members (an empty dict is 64 bytes, one with a key 192)
_PER_ARRAY = 64  # `[`: an empty list
# `"`: half a string's header (a one-character string is 50 bytes; its text is counted apart), plus half the
# dict slot of a key: every `:` follows a key string, so there are at most half as many colons as quotes.
_PER_QUOTE = 25 + 24
_PER_COMMA = 32  # `,`: one more element: a list slot and a float or a large int
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b'{[",\\')


def decoded_estimate(body: bytes | bytearray) -> int:
    """An upper bound on the memory `body` and what orjson decodes from it take together, from a few C-level
    scans of the body: about 0.1 ms for a NodeNames body, 3 ms for a 3 MB Nodes-mode one.

    The text of the decoded strings is at most one byte per body byte when the body is ASCII without `\\u`
    escapes; otherwise one non-Latin character makes a whole string four bytes per character."""
    # One pass keeps only the structural bytes (about a fifth of a Kubernetes object): counting them there is
    # cheaper than a pass per byte value over the whole body.
    marks = body.translate(None, _NOT_STRUCTURAL)
    wide = not body.isascii() or (b"\\" in marks and b"\\u" in body)
    return (
        _BASE
        + len(body) * (5 if wide else 2)  # the body itself, and the text of every string decoded from it
        + _PER_OBJECT * marks.count(b"{")
        + _PER_ARRAY * marks.count(b"[")
        + _PER_QUOTE * marks.count(b'"')
        + _PER_COMMA * marks.count(b",")
    )


@dataclass(frozen=True, slots=True)
class BodyCaps:
    """The largest body each verb accepts.

    filter and prioritize: a NodeNames-mode request (the extender keeps its own node cache) is the pod and the
    node names, about 100 KB at 5,000 nodes, but the pod itself may be large (etcd takes objects up to 1.5 MiB):
    `names`. A Nodes-mode request carries every candidate Node object, tens of MB at 5,000 nodes, and only the
    `--standalone` extender serves that mode for real: `nodes`. Which mode a body is in shows only once it is
    decoded, so the cap follows what the extender serves: `nodes` with --standalone, else `names`.
    bind: `BIND_BODY_BYTES`."""

    nodes: int
    names: int
    standalone: bool

    def for_verb(self, verb: str) -> int:
        if verb == "bind":
            return BIND_BODY_BYTES
        return self.nodes if self.standalone else min(self.names, self.nodes)


class Budget:
    """Memory that request bodies in flight may hold together (their estimated decoded size). One event loop
    uses it: no locks."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def reserve(self, amount: int) -> Reservation | None:
        """A reservation of `amount`, or None when the budget cannot hold it now."""
        reservation = Reservation(self)
        return reservation if reservation.grow(amount) else None


class Reservation:
    """What one request holds of a `Budget`; it only grows, until `release`."""

    __slots__ = ("_budget", "amount")

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self.amount = 0

    def grow(self, to: int) -> bool:
        """Hold `to` in all (no-op if already held); False, holding what it held, if the budget has no room."""
        extra = to - self.amount
        if extra <= 0:
            return True
        if self._budget.held + extra > self._budget.capacity:
            return False
        self._budget.held += extra
        self.amount = to
        return True

    def release(self) -> None:
        self._budget.held -= self.amount
        self.amount = 0
