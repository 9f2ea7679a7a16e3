"""Encoders that inject faults around the real model, loaded through EMBEDFLEET_ENCODER.

State that must survive across worker processes (how many calls failed) lives in a file
under EMBEDFLEET_TEST_STATE_DIR.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from embedfleet.encode.encoder import SentenceTransformerEncoder
from embedfleet.settings import Settings

POISON_MARKER = "POISON-MARKER"
NAN_MARKER = "NAN-MARKER"


class _Wrapped(SentenceTransformerEncoder):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)


class PoisonEncoder(_Wrapped):
    """Raises on any batch holding a record with the poison marker."""

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if any(POISON_MARKER in t for t in texts):
            raise ValueError("this record poisons the model")
        return super().encode_batch(texts, batch_size)


class NaNEncoder(_Wrapped):
    """Returns NaN for the records with the NaN marker, real vectors for the rest."""

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        matrix = super().encode_batch(texts, batch_size)
        for i, text in enumerate(texts):
            if NAN_MARKER in text:
                matrix[i] = np.nan
        return matrix


class OutOfMemoryEncoder(_Wrapped):
    """Runs out of memory on any batch of more than 4 texts."""

    limit = 4

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if len(texts) > self.limit and (batch_size or self.batch_size) > self.limit:
            raise torch.OutOfMemoryError(f"simulated: tried to allocate for {len(texts)} texts")
        return super().encode_batch(texts, batch_size)


class FlakyEncoder(_Wrapped):
    """The first two calls in the whole fleet fail with a transient error, then all succeed."""

    failures = 2

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        counter = Path(os.environ["EMBEDFLEET_TEST_STATE_DIR"]) / "flaky.count"
        with counter.open("a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            calls = int(handle.read() or 0) + 1
            handle.seek(0)
            handle.truncate()
            handle.write(str(calls))
        if calls <= self.failures:
            raise ConnectionError(f"simulated lost connection (call {calls})")
        return super().encode_batch(texts, batch_size)


class SlowEncoder(_Wrapped):
    """The real model, plus a pause per call, so a test can act while chunks are in flight;
    EMBEDFLEET_TEST_LOAD_DELAY adds seconds to the load, as a larger model would."""

    def __init__(self, settings: Settings) -> None:
        time.sleep(float(os.environ.get("EMBEDFLEET_TEST_LOAD_DELAY", "0")))
        super().__init__(settings)

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        time.sleep(float(os.environ.get("EMBEDFLEET_TEST_DELAY", "0.5")))
        return super().encode_batch(texts, batch_size)


CRASH_MARKER = "CRASH-MARKER"


class CrashEncoder(_Wrapped):
    """Exits its process, as the OOM killer or a segfault in native code would end it, on any
    batch holding a record with the crash marker."""

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if any(CRASH_MARKER in t for t in texts):
            os._exit(137)
        return super().encode_batch(texts, batch_size)
