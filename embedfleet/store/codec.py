"""Vectors as bytes: float32, little-endian, row-major. The one format on the wire and on disk."""

from __future__ import annotations

import numpy as np

DTYPE = np.dtype("<f4")


def pack(matrix: np.ndarray) -> bytes:
    """An (n, d) array as float32 bytes."""
    return np.ascontiguousarray(matrix, dtype=DTYPE).tobytes()


def unpack(blob: bytes, dim: int) -> np.ndarray:
    """float32 bytes as an (n, dim) array; raises if the size does not fit dim."""
    flat = np.frombuffer(blob, dtype=DTYPE)
    if dim <= 0 or flat.size % dim:
        raise ValueError(f"{len(blob)} bytes do not hold float32 vectors of dimension {dim}")
    return flat.reshape(-1, dim)


def rows(blob: bytes, dim: int) -> list[bytes]:
    """Split a packed (n, dim) blob into n per-vector blobs without a float round trip."""
    width = dim * DTYPE.itemsize
    if dim <= 0 or len(blob) % width:
        raise ValueError(f"{len(blob)} bytes do not hold float32 vectors of dimension {dim}")
    return [blob[i : i + width] for i in range(0, len(blob), width)]
