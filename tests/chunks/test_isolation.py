"""Pure logic of poison isolation and out-of-memory splitting (no model, no servers)."""

from __future__ import annotations

import numpy as np
import pytest

from embedfleet.chunks.isolation import encode_isolating, is_out_of_memory, is_transient

DIM = 3


def _encoder(bad: set[str] = frozenset(), oom_above: int | None = None, nan: set[str] = frozenset(), calls=None):
    def encode(texts, batch_size):
        if calls is not None:
            calls.append((len(texts), batch_size))
        if oom_above is not None and len(texts) > oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if bad & set(texts):
            raise ValueError("poisoned")
        rows = np.ones((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            if text in nan:
                rows[i] = np.nan
            if text == "zero":
                rows[i] = 0.0
        return rows

    return encode


def test_one_bad_record_costs_one_record() -> None:
    """Bisecting a chunk of 256 with one poison record stores 255 and fails exactly that one."""
    texts = [f"t{i}" for i in range(256)]
    result = encode_isolating(_encoder(bad={"t100"}), texts, DIM, 32)
    assert [f.index for f in result.failures] == [100]
    assert result.failures[0].error_type == "ValueError"
    assert len(result.vectors) == 255 and result.splits == 0


def test_out_of_memory_halves_batch_down_to_what_fits() -> None:
    """OOM above 4 texts halves the chunk (and the batch size) until it fits; splits are counted."""
    calls: list[tuple[int, int]] = []
    result = encode_isolating(_encoder(oom_above=4, calls=calls), [f"t{i}" for i in range(16)], DIM, 32)
    assert len(result.vectors) == 16 and not result.failures
    assert result.splits == 3  # 16 -> 2x8 -> 4x4
    assert calls[-1] == (4, 4)


def test_out_of_memory_on_a_single_record_is_its_failure() -> None:
    """A record that alone runs out of memory becomes a failure instead of looping."""
    result = encode_isolating(_encoder(oom_above=0), ["a", "b"], DIM, 32)
    assert [f.index for f in result.failures] == [0, 1]


def test_non_finite_and_zero_vectors_fail_their_record() -> None:
    """NaN and zero-norm vectors are never returned as successes."""
    result = encode_isolating(_encoder(nan={"b"}), ["a", "b", "zero", "d"], DIM, 32)
    assert {f.index: f.message for f in result.failures} == {
        1: "vector has NaN or infinite values", 2: "vector has zero norm"}
    indices, matrix = result.ordered(DIM)
    assert indices == [0, 3] and matrix.shape == (2, DIM)


def test_transient_errors_are_not_bisected() -> None:
    """A lost connection is raised for the task to retry, not blamed on records."""
    def flaky(texts, batch_size):
        raise ConnectionError("broker went away")

    with pytest.raises(ConnectionError):
        encode_isolating(flaky, ["a", "b"], DIM, 32)


def test_wrong_shape_is_bisected_like_any_permanent_error() -> None:
    """An encoder returning the wrong shape for a batch is narrowed down to the records it fails on."""
    def shapeless(texts, batch_size):
        return np.ones((len(texts), DIM + (1 if "x" in texts else 0)), dtype=np.float32)

    result = encode_isolating(shapeless, ["a", "x", "c"], DIM, 32)
    assert [f.index for f in result.failures] == [1]


def test_error_classification() -> None:
    """Memory and transient errors are told apart from the rest."""
    import redis.exceptions
    import torch

    assert is_out_of_memory(torch.OutOfMemoryError("x")) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(ValueError("out of memory"))
    assert is_transient(redis.exceptions.ConnectionError()) and is_transient(TimeoutError())
    assert not is_transient(ValueError())


def test_token_batches_respect_count_and_padded_tokens() -> None:
    """Batches go longest first, hold at most max_count texts and max_tokens padded tokens, and cover every text once."""
    from embedfleet.encode.encoder import token_batches

    lengths = [10, 200, 10, 50, 256, 256, 12, 11]
    batches = token_batches(lengths, max_count=3, max_tokens=600)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3 and max(lengths[i] for i in batch) * len(batch) <= 600
    assert batches[0] == [4, 5]
