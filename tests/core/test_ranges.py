from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuronalloc import RangeListError, decode_ranges, encode_ranges

ID_SETS = st.frozensets(st.integers(0, 300), max_size=80)


@given(ID_SETS)
def test_round_trip(ids: frozenset[int]) -> None:
    assert decode_ranges(encode_ranges(ids)) == ids


@given(ID_SETS)
def test_encoding_is_canonical(ids: frozenset[int]) -> None:
    text = encode_ranges(ids)
    assert " " not in text
    runs = [tuple(int(x) for x in part.split("-")) for part in text.split(",")] if text else []
    starts = [r[0] for r in runs]
    assert starts == sorted(starts)
    for (a_first, *a_rest), (b_first, *_) in itertools.pairwise(runs):
        a_last = a_rest[0] if a_rest else a_first
        assert b_first > a_last + 1, f"runs {text!r} touch or overlap"
    for run in runs:
        if len(run) == 2:
            assert run[0] < run[1]


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 10)), max_size=10))
def test_decoder_accepts_unsorted_and_adjacent_runs(pairs: list[tuple[int, int]]) -> None:
    parts = [f"{a}-{a + n}" if n else str(a) for a, n in pairs]
    expected = {i for a, n in pairs for i in range(a, a + n + 1)}
    assert decode_ranges(",".join(parts)) == expected


@pytest.mark.parametrize(
    ("text", "ids"),
    [("", set()), ("0", {0}), ("0-3,8,10-15", {0, 1, 2, 3, 8, *range(10, 16)}), ("8-15", set(range(8, 16)))],
)
def test_examples(text: str, ids: set[int]) -> None:
    assert decode_ranges(text) == ids
    assert encode_ranges(ids) == text


@pytest.mark.parametrize(
    "text", [" ", "1,", ",1", "a", "1-", "-1", "3-1", "1--2", "1-2-3", "1 ,2", "0x1", "\u0661", "1.0", "0-99999999"]
)
def test_garbage_is_refused_with_a_clear_error(text: str) -> None:
    with pytest.raises(RangeListError) as caught:
        decode_ranges(text)
    assert repr(text) in str(caught.value), "the error quotes the offending text"


def test_limit_bounds_ids() -> None:
    assert decode_ranges("0-15", limit=16) == set(range(16))
    with pytest.raises(RangeListError, match="out of range"):
        decode_ranges("0-16", limit=16)


@given(st.text(max_size=30))
def test_decoder_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(RangeListError):
        decode_ranges(text)


def test_negative_ids_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        encode_ranges([-1])
