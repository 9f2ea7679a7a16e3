"""Encode a chunk so that one bad record costs one record, not the chunk.

Out of memory halves the batch and tries the halves, down to one record. Any other
permanent error bisects the chunk the same way until the records that fail on their own
are found. A vector that is not finite or has zero norm is a failure of its record.
Transient errors (broker, database, timeouts) are not handled here: they retry the task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis.exceptions

# Failures that pass on their own; the task retries them with backoff instead of bisecting.
# (redis-py's errors do not derive from the built-in ConnectionError.)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

EncodeFn = Callable[[Sequence[str], int], np.ndarray]


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    # sqlalchemy's OperationalError covers lost connections and SQLite's "database is locked";
    # kombu's covers a broker that cannot be reached.
    return type(exc).__name__ == "OperationalError"


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA), the CPU allocator's RuntimeError, or MemoryError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass(frozen=True)
class RecordFailure:
    index: int
    error_type: str
    message: str


@dataclass
class Isolated:
    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    failures: list[RecordFailure] = field(default_factory=list)
    splits: int = 0

    def ordered(self, dim: int) -> tuple[list[int], np.ndarray]:
        """Indices that succeeded, ascending, and their vectors as one (n, dim) matrix."""
        indices = sorted(self.vectors)
        if not indices:
            return [], np.zeros((0, dim), dtype=np.float32)
        return indices, np.stack([self.vectors[i] for i in indices]).astype(np.float32, copy=False)


def encode_isolating(encode: EncodeFn, texts: Sequence[str], dim: int, batch_size: int) -> Isolated:
    result = Isolated()
    # A stack instead of recursion: (indices, batch size) still to try.
    pending: list[tuple[list[int], int]] = [(list(range(len(texts))), batch_size)]
    while pending:
        indices, size = pending.pop()
        try:
            matrix = np.asarray(encode([texts[i] for i in indices], size))
            if matrix.shape != (len(indices), dim):
                raise ValueError(f"encoder returned shape {matrix.shape} for {len(indices)} texts of dimension {dim}")
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(indices) == 1:
                result.failures.append(RecordFailure(indices[0], type(exc).__name__, str(exc) or repr(exc)))
                continue
            half = len(indices) // 2
            if is_out_of_memory(exc):
                result.splits += 1
                size = max(1, min(size, len(indices)) // 2)
            # Push the second half first so the first half is tried first.
            pending.append((indices[half:], size))
            pending.append((indices[:half], size))
            continue
        finite = np.isfinite(matrix).all(axis=1)
        nonzero = np.asarray(matrix.any(axis=1))
        for index, row, is_finite, is_nonzero in zip(indices, matrix, finite, nonzero, strict=True):
            if not is_finite:
                result.failures.append(RecordFailure(index, "InvalidVector", "vector has NaN or infinite values"))
            elif not is_nonzero:
                result.failures.append(RecordFailure(index, "InvalidVector", "vector has zero norm"))
            else:
                result.vectors[index] = row
    result.failures.sort(key=lambda f: f.index)
    return result
