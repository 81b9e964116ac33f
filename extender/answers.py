"""One request shape's memoised answers, node by node, laid out so a reply is built without a Python loop.

Each node's verdict is kept as an `Outcome`: interned, so every node and shape with the same words shares one
object, and a memo entry costs one dict slot (a few tens of bytes), whatever the verdict says. An outcome carries
what the replies need, precomputed: whether it passes, which list it fails into, its reason as the encoded tail
of a JSON member (`:"why"`), its score as the encoded tail of a HostPriority (`,"Score":7}`). A reply is then a
few C-level passes over the request's names: look every outcome up (`map(dict.get, names)`), split the names
with `itertools.compress`, and join each name's JSON string (`orjson.dumps`) to its outcome's tail.

The verdict an outcome keeps has no `blocks` and no `detail` (the node's own IDs): those differ from node to
node, and only logs and bind errors show them, which judge the node again.

`extender.verdicts.Verdicts` records a node's verdict and forgets it in one call each, so a memo never answers
with a verdict older than the node state it came from.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from extender.fit import Verdict
from extender.wire import encode_members

__all__ = ["FilterAnswer", "FilterMemo", "Outcome", "ScoreMemo", "encode_priority_list", "outcome", "score_piece"]


@dataclass(frozen=True, slots=True)
class FilterAnswer:
    """Filter's outcome for one request: what passed (in the request's order) and why the rest did not.

    FailedNodes and FailedAndUnresolvableNodes come already encoded, as the members of a JSON object
    (`"n1":"why","n2":"why"`), in the order the request first names each node."""

    passed: list[str]
    failed: int  # nodes in FailedNodes: too full or too fragmented now, or unknown
    unresolvable: int  # nodes in FailedAndUnresolvableNodes
    unknown: int  # how many of `failed` have no usable state (for the rejection metric)
    failed_members: bytes
    unresolvable_members: bytes
    example: str = ""  # one failing node's specifics ("node: free IDs and rule"), for the log when none passed
    not_serving: int = 0  # how many of `failed` have a plugin that says it cannot serve now

    @classmethod
    def of(cls, names: Iterable[str], verdicts: Iterable[Verdict]) -> FilterAnswer:
        """The general way, one verdict at a time: Nodes mode, and the reference the indexed path is tested
        against."""
        passed: list[str] = []
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        unknown: set[str] = set()  # a set: a node named twice is one node rejected
        stopped: set[str] = set()
        shown: dict[bool, tuple[str, Verdict]] = {}  # the first unresolvable (True) and failed (False) node
        for name, verdict in zip(names, verdicts, strict=True):
            if verdict.fits:
                passed.append(name)
                continue
            is_unresolvable = verdict.kind == "unresolvable"
            shown.setdefault(is_unresolvable, (name, verdict))
            if is_unresolvable:
                unresolvable[name] = verdict.reason
            else:
                failed[name] = verdict.reason
                if verdict.kind == "unknown":
                    unknown.add(name)
                elif verdict.kind == "not_serving":
                    stopped.add(name)
        first = shown.get(True) or shown.get(False)
        example = example_of(*first) if first else ""
        failed_members, unresolvable_members = encode_members(failed), encode_members(unresolvable)
        return cls(passed, len(failed), len(unresolvable), len(unknown), failed_members, unresolvable_members, example,
                   len(stopped))  # fmt: skip


def example_of(name: str, verdict: Verdict) -> str:
    return f"{name}: {verdict.detail or verdict.reason}"


class Outcome:
    """A verdict as the replies need it (see the module docstring). Compared by identity: outcomes are
    interned, and `None in outcomes` must stay a C-level scan."""

    __slots__ = ("failed", "member_tail", "not_serving", "passes", "score_tail", "unknown", "unresolvable", "verdict")

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        self.passes = verdict.fits
        self.unresolvable = verdict.kind == "unresolvable"
        self.failed = not self.passes and not self.unresolvable
        self.unknown = verdict.kind == "unknown"
        self.not_serving = verdict.kind == "not_serving"
        self.member_tail = b":" + orjson.dumps(verdict.reason)
        self.score_tail = b',"Score":' + orjson.dumps(verdict.score) + b"}"


_interned: dict[tuple[str, int, str], Outcome] = {}
# Distinct (kind, score, reason): a few hundred in a real cluster (one reason per shape and rule, a plugin's
# not-serving reasons); beyond this the table starts again (outcomes already in memos stay valid).
_INTERN_LIMIT = 16_384


def outcome(verdict: Verdict) -> Outcome:
    key = (verdict.kind, verdict.score, verdict.reason)
    found = _interned.get(key)
    if found is None:
        if len(_interned) >= _INTERN_LIMIT:
            _interned.clear()
        found = _interned[key] = Outcome(Verdict(verdict.kind, verdict.score, verdict.reason))
    return found


_PASSES = operator.attrgetter("passes")
_FAILED = operator.attrgetter("failed")
_UNRESOLVABLE = operator.attrgetter("unresolvable")
_UNKNOWN = operator.attrgetter("unknown")
_NOT_SERVING = operator.attrgetter("not_serving")
_MEMBER_TAIL = operator.attrgetter("member_tail")
_SCORE_TAIL = operator.attrgetter("score_tail")
_HOST = b'{"Host":'


def _members(chosen: dict[str, Outcome]) -> bytes:
    """`"n1":"why","n2":"why"`: each name as orjson writes a key, then its outcome's tail."""
    return b",".join(map(operator.add, map(orjson.dumps, chosen), map(_MEMBER_TAIL, chosen.values())))


def _split(names: Sequence[str], outcomes: list[Outcome], which: operator.attrgetter[bool]) -> dict[str, Outcome]:
    """The names (once each, first mention first) whose outcome has `which`, with their outcomes."""
    return dict(zip(itertools.compress(names, map(which, outcomes)), itertools.compress(outcomes, map(which, outcomes)),
                    strict=True))  # fmt: skip


class _Memo:
    """Outcomes of one request shape, by node (`FilterMemo` unscored, `ScoreMemo` scored)."""

    __slots__ = ("outcomes",)

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}

    def record(self, name: str, verdict: Verdict) -> None:
        self.outcomes[name] = outcome(verdict)

    def forget(self, name: str) -> None:
        self.outcomes.pop(name, None)

    def _recorded(self, names: Sequence[str]) -> list[Outcome] | None:
        """The outcome of each of `names`, or None if any has no recorded verdict yet (one C-level pass)."""
        found = list(map(self.outcomes.get, names))
        return None if None in found else found  # type: ignore[return-value]  # no None, just checked


class FilterMemo(_Memo):
    """Unscored outcomes of one request shape, by node."""

    __slots__ = ()

    def answer(self, names: Sequence[str]) -> FilterAnswer | None:
        """The answer for `names`, or None if any of them has no recorded verdict yet."""
        outcomes = self._recorded(names)
        if outcomes is None:
            return None
        return _full_answer(names, outcomes, list(itertools.compress(names, map(_PASSES, outcomes))))

    def brief(self, names: Sequence[str]) -> FilterAnswer | None:
        """`answer`, but when a node passes, the failed ones are counted and not listed (no members, no example),
        or None if any of `names` has no recorded verdict yet."""
        outcomes = self._recorded(names)
        if outcomes is None:
            return None
        passed = list(itertools.compress(names, map(_PASSES, outcomes)))
        if not passed or len(passed) == len(names):
            return _full_answer(names, outcomes, passed)
        return FilterAnswer(passed, sum(map(_FAILED, outcomes)), sum(map(_UNRESOLVABLE, outcomes)),
                            sum(map(_UNKNOWN, outcomes)), b"", b"", "", sum(map(_NOT_SERVING, outcomes)))  # fmt: skip


def _full_answer(names: Sequence[str], outcomes: list[Outcome], passed: list[str]) -> FilterAnswer:
    """Filter's answer with every failed node listed, from the outcomes of `names` and those that `passed`."""
    if len(passed) == len(names):
        return FilterAnswer(passed, 0, 0, 0, b"", b"")
    failed = _split(names, outcomes, _FAILED)
    unresolvable = _split(names, outcomes, _UNRESOLVABLE)
    first = next(iter(unresolvable.items() or failed.items()))
    return FilterAnswer(
        passed,
        len(failed),
        len(unresolvable),
        sum(map(_UNKNOWN, failed.values())),
        _members(failed),
        _members(unresolvable),
        example_of(first[0], first[1].verdict),
        sum(map(_NOT_SERVING, failed.values())),
    )


def score_piece(name: str, verdict: Verdict) -> bytes:
    """`{"Host":"node","Score":n}`: one HostPriority, exactly as orjson writes it in a whole list."""
    return orjson.dumps({"Host": name, "Score": verdict.score})


def encode_priority_list(pieces: Iterable[bytes]) -> bytes:
    """HostPriorityList from `score_piece`s."""
    return b"[" + b",".join(pieces) + b"]"


class ScoreMemo(_Memo):
    """Scored outcomes of one request shape, by node."""

    __slots__ = ()

    def best(self, names: Sequence[str], limit: int) -> list[str] | None:
        """Up to `limit` of `names` (first ones first) that share the highest score among them, or None if any of
        them has no recorded verdict yet."""
        outcomes = self._recorded(names)
        if outcomes is None:
            return None
        scores = [o.verdict.score for o in outcomes]
        top = max(scores, default=0)
        return list(itertools.islice(itertools.compress(names, map(top.__eq__, scores)), limit))

    def reply(self, names: Sequence[str]) -> bytes | None:
        """The HostPriorityList for `names`, or None if any of them has no recorded verdict yet."""
        outcomes = self._recorded(names)
        if outcomes is None:
            return None
        heads = map(operator.add, itertools.repeat(_HOST), map(orjson.dumps, names))
        return b"[" + b",".join(map(operator.add, heads, map(_SCORE_TAIL, outcomes))) + b"]"
