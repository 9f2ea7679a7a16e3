"""Chunking by a record cap and an estimated-token budget."""

from __future__ import annotations

import pytest

from embedfleet.corpus.chunking import chunk_records, estimate_tokens
from embedfleet.corpus.records import Record, content_hash


def rec(i: int, text: str) -> Record:
    return Record(f"r{i}", i, text, content_hash(text), i + 1)


def ids(chunks):
    return [[r.record_id for r in chunk] for chunk in chunks]


def test_max_records_caps_each_chunk():
    """No chunk holds more than max_records records; the last holds the remainder."""
    records = [rec(i, "x") for i in range(7)]
    chunks = list(chunk_records(records, max_records=3, token_budget=10_000, window=256))
    assert [len(c) for c in chunks] == [3, 3, 1]


def test_token_budget_closes_a_chunk_before_it_overflows():
    """A chunk takes records while their estimated tokens fit the budget, and not one more."""
    # each text: 40 chars -> 10 + 2 = 12 tokens; budget 36 fits exactly three
    records = [rec(i, "a" * 40) for i in range(7)]
    chunks = list(chunk_records(records, max_records=100, token_budget=36, window=256))
    assert [len(c) for c in chunks] == [3, 3, 1]
    for chunk in chunks:
        assert sum(estimate_tokens(r.text, 256) for r in chunk) <= 36


def test_token_budget_uses_window_capped_estimate():
    """A long text costs at most the window, so the window cap decides how many fit."""
    records = [rec(i, "a" * 4000) for i in range(4)]  # 1002 tokens uncapped, 100 capped
    chunks = list(chunk_records(records, max_records=100, token_budget=200, window=100))
    assert [len(c) for c in chunks] == [2, 2]


def test_record_larger_than_budget_forms_its_own_chunk():
    """A record whose estimate alone exceeds the budget is sent alone rather than dropped or merged."""
    records = [rec(0, "a" * 8), rec(1, "b" * 400), rec(2, "c" * 8)]  # 4, 102, 4 tokens
    chunks = list(chunk_records(records, max_records=10, token_budget=50, window=256))
    assert ids(chunks) == [["r0"], ["r1"], ["r2"]]


def test_order_is_preserved_across_chunks():
    """Concatenating the chunks gives back every record, in input order."""
    records = [rec(i, "t" * (i * 7 % 50)) for i in range(53)]
    chunks = list(chunk_records(records, max_records=5, token_budget=30, window=256))
    assert len(chunks) > 10
    assert [r for chunk in chunks for r in chunk] == records
    assert all(chunks)


def test_chunk_records_is_lazy_over_its_input():
    """Chunks come out while the input is still being read (it works on a generator)."""
    pulled = []

    def source():
        for i in range(10):
            pulled.append(i)
            yield rec(i, "x")

    first = next(chunk_records(source(), max_records=2, token_budget=100, window=256))
    assert [r.record_id for r in first] == ["r0", "r1"]
    assert len(pulled) < 10


def test_no_records_no_chunks():
    """An empty input gives no chunks (not one empty chunk)."""
    assert list(chunk_records([], max_records=3, token_budget=10, window=256)) == []


@pytest.mark.parametrize("max_records, budget", [(0, 100), (-1, 100), (3, 0), (3, -5)])
def test_invalid_arguments_raise_value_error(max_records, budget):
    """A record cap or a token budget below 1 is refused with ValueError."""
    with pytest.raises(ValueError):
        list(chunk_records([rec(0, "x")], max_records=max_records, token_budget=budget, window=256))


def test_sort_windows_orders_each_window_by_length_stably() -> None:
    """Within each window, longest first; equal lengths keep corpus order; windows never mix."""
    from embedfleet.corpus.chunking import sort_windows
    from embedfleet.corpus.records import Record

    texts = ["aa", "b", "cccc", "dd", "e", "ffffff", "g"]
    records = [Record(f"r{i}", i, t, "h", i + 1) for i, t in enumerate(texts)]
    ordered = [r.record_id for r in sort_windows(records, 3)]
    assert ordered == ["r2", "r0", "r1", "r5", "r3", "r4", "r6"]
    assert [r.record_id for r in sort_windows(records, 1)] == [f"r{i}" for i in range(7)]
