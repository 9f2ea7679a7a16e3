"""The bf16 sections' timing: the sides alternate and each keeps its best round."""

from __future__ import annotations

from benchmarks import bf16


def test_sides_alternate_and_keep_their_best_round() -> None:
    """Each callable runs ROUNDS times, interleaved with the others, so load falls on every side alike."""
    order: list[str] = []
    seconds, results = bf16._best({"a": lambda: order.append("a") or 1, "b": lambda: order.append("b") or 2})
    assert order == ["a", "b"] * bf16.ROUNDS
    assert results == {"a": 1, "b": 2} and all(0 <= s < 1 for s in seconds.values())
