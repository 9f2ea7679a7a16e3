"""A model-free encoder with a poison record, loaded through EMBEDFLEET_ENCODER: dead letters without torch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tests.encode.fake_encoders import HashEncoder

POISON = "POISON-RECORD"


class HashPoison(HashEncoder):
    """The HashEncoder, raising on any batch that holds the poison marker."""

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if any(POISON in t for t in texts):
            raise ValueError("this record poisons the model")
        return super().encode_batch(texts, batch_size)
