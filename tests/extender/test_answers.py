"""Replies built from the indexed memo (`extender.answers`): the same as the general, verdict-by-verdict path,
byte for byte, and never stale.

The reference is the general path: `FilterAnswer.of` over one verdict at a time and the orjson encoders in
`wire`, fed by a fresh `Verdicts` that has memoised nothing yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.answers import FilterAnswer, FilterMemo, ScoreMemo
from extender.cache import ClusterStore
from extender.fit import FITS, Verdict, not_serving, unknown
from extender.metrics import ExtenderMetrics
from extender.server import ServerSettings, build_app
from extender.verdicts import Verdicts
from extender.wire import encode_filter_reply, encode_priorities, parse_extender_args

from .builders import container, names_args, node_doc, node_state, pod_doc
from .serving import Http, served

# Names with the characters JSON must escape, and some it need not.
_TEXT = st.text(alphabet=st.sampled_from('ab-."\\/\n\tÿ€😀'), min_size=1, max_size=8)
_VERDICTS = st.sampled_from(
    [FITS, Verdict("no_block", 0, "too full"), Verdict("no_block", 0, "other rule"),
     Verdict("unresolvable", 0, "never"), unknown("garbled"), not_serving("kubelet restarted")]
)  # fmt: skip


@given(st.lists(st.tuples(_TEXT, _VERDICTS), max_size=30), st.lists(_TEXT, max_size=40))
def test_indexed_filter_answer_is_the_general_one(recorded: list[tuple[str, Verdict]], asked: list[str]) -> None:
    memo = FilterMemo()
    latest: dict[str, Verdict] = {}
    for name, verdict in recorded:  # a name recorded twice keeps its latest verdict only
        memo.record(name, verdict)
        latest[name] = verdict
    for name in asked[::3]:
        memo.forget(name)
        latest.pop(name, None)
    names = [n for n in asked if n in latest] + list(latest)
    assert memo.answer(names) == FilterAnswer.of(names, [latest[n] for n in names])
    # and the members are a JSON object's: what orjson writes for the reasons, first mention first
    reasons = {n: latest[n].reason for n in names if not latest[n].fits and latest[n].kind != "unresolvable"}
    answer = memo.answer(names)
    assert answer is not None and orjson.loads(b"{" + answer.failed_members + b"}") == reasons
    unjudged = [n for n in asked if n not in latest]
    if unjudged:
        assert memo.answer(names + unjudged[:1]) is None


@given(st.dictionaries(_TEXT, st.integers(0, 10), max_size=30), st.integers(0, 5))
def test_priority_reply_is_the_general_encoders_bytes(by_name: dict[str, int], repeats: int) -> None:
    # A node named twice in one request has one verdict (one memo entry), so it has one score.
    names = list(by_name) + list(by_name)[:repeats]
    memo = ScoreMemo()
    for name, score in by_name.items():
        memo.record(name, Verdict("fit", score, ""))
    assert memo.reply(names) == encode_priorities((name, by_name[name]) for name in names)
    if names:
        memo.forget(names[0])
        assert memo.reply(names) is None


# ---- the served extender, its memo and pieces against a fresh view after every kind of change ----------------

NAMES = ["roomy", "snug", "trn", "cpu", "ghost"]
POD = pod_doc("p", neuron=2)


def _reference(events: list[tuple[str, str, tuple[Any, ...]]], pod: dict[str, Any]) -> tuple[bytes, bytes]:
    """Filter and prioritize replies the general way, from a fresh view (no memo) given the same events."""
    view = Verdicts(ClusterStore())
    for event in events:
        view.store.apply(*event)
    args = parse_extender_args(names_args(pod, NAMES))
    request = args.pod.request
    answer = FilterAnswer.of(NAMES, [view.verdict(name, request, scored=False) for name in NAMES])
    scores = [(name, view.verdict(name, request, scored=True).score) for name in answer.passed]
    return (
        encode_filter_reply(args, answer.passed, answer.failed_members, answer.unresolvable_members),
        encode_priorities(scores),
    )


class Served:
    def __init__(self, http: Http, view: Verdicts, loop: asyncio.AbstractEventLoop) -> None:
        self.http, self.view, self.loop = http, view, loop
        self.events: list[tuple[str, str, tuple[Any, ...]]] = []

    def apply(self, kind: str, event_type: str, *docs: Any) -> None:
        """One watch event, applied on the app's loop as the reflectors apply it."""

        async def on_loop() -> None:
            self.view.store.apply(kind, event_type, docs)

        asyncio.run_coroutine_threadsafe(on_loop(), self.loop).result(10)
        self.events.append((kind, event_type, docs))

    def raw(self, path: str, doc: Any) -> bytes:
        response = self.http.pool.request(
            "POST", self.http.base + path, body=orjson.dumps(doc), headers={"Content-Type": "application/json"}
        )
        assert response.status == 200, response.data
        return bytes(response.data)

    def replies(self, pod: dict[str, Any] = POD) -> tuple[bytes, bytes]:
        """This pod's filter then prioritize (on the nodes that passed), checked against the reference."""
        filtered = self.raw("/filter", names_args(pod, NAMES))
        scored = self.raw("/prioritize", names_args(pod, orjson.loads(filtered)["NodeNames"]))
        assert (filtered, scored) == _reference(self.events, pod)
        return filtered, scored


@pytest.fixture
def extender() -> Iterator[Served]:
    view = Verdicts(ClusterStore())
    make_app: Callable[[], Any] = lambda: build_app(ServerSettings(), view, None, ExtenderMetrics())  # noqa: E731
    with served(make_app) as (base, loop):
        ext = Served(Http(base), view, loop)
        ext.apply("nodes", "SYNC", node_doc("roomy", node_state("inf1.24xlarge", used_devices={0})),
                  node_doc("snug", node_state("inf1.24xlarge", used_devices=set(range(16)) - {8, 9, 10, 11})),
                  node_doc("trn", node_state("trn1.32xlarge")), node_doc("cpu", annotations={}))  # fmt: skip
        ext.apply("pods", "SYNC")
        yield ext


def test_pieces_follow_a_node_state_change(extender: Served) -> None:
    before = extender.replies()
    extender.replies()  # now from the memo and the pieces
    extender.apply("nodes", "MODIFIED", node_doc("snug", node_state("inf1.24xlarge", used_devices=set(range(14)))))
    extender.apply("nodes", "MODIFIED", node_doc("cpu", annotations={"neuron-contig.io/state": "garbled"}))
    after = extender.replies()
    assert after[1] != before[1]  # snug's score changed: a stale piece would show the old one


def test_pieces_follow_a_pod_bound_to_the_node(extender: Served) -> None:
    before = extender.replies()
    extender.apply("pods", "ADDED", pod_doc("held", neuron=2, node_name="snug", created="2026-11-22T01:00:00Z"))
    after = extender.replies()
    assert after[1] != before[1]  # snug has one free pair left, not two: its score changed
    extender.apply("pods", "DELETED", pod_doc("held", neuron=2, node_name="snug"))
    assert extender.replies() == before


def test_pieces_of_an_evicted_shape_are_dropped_and_rebuilt(extender: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    import extender.verdicts as cache

    monkeypatch.setattr(cache, "_MIN_SHAPES", 1)
    monkeypatch.setattr(cache, "_MAX_SHAPES", 4)  # room for four shapes' memos
    extender.replies()
    shape = parse_extender_args(names_args(POD, NAMES)).pod.request
    assert extender.view.remembers_shape(shape), "the first requests left a memo"
    # Other shapes, each asked more often, push this one out of the memo, and its outcomes with it.
    for size in range(1, 18):
        extender.replies(pod_doc("other", containers=[container("a", neuron=2), container("b", cores=size)]))
        extender.replies(pod_doc("other", containers=[container("a", neuron=2), container("b", cores=size)]))
    assert not extender.view.remembers_shape(shape)
    extender.apply("nodes", "MODIFIED", node_doc("roomy", node_state("inf1.24xlarge", used_devices={0, 2, 4})))
    extender.replies()
