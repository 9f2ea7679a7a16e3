"""Encoders for tests, loaded through EMBEDFLEET_ENCODER like any other backend."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from embedfleet.config.settings import Settings


class HashEncoder:
    """Deterministic unit vectors from a hash of the text: no model, for pure pipeline tests."""

    dimension = 8
    max_tokens = 256
    device = "cpu"

    def __init__(self, settings: Settings) -> None:
        self.model_name = settings.model

    batch_size = 32

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:32], dtype=np.uint8)[:8] for t in texts]
        matrix = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dimension) + 1.0
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
