"""Encoders for tests, loaded through EMBEDFLEET_ENCODER like any other backend."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from embedfleet.settings import Settings


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


class SlowHashEncoder(HashEncoder):
    """HashEncoder that takes SLOW_HASH_DELAY seconds a call: a run a test can kill mid-job."""

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        import os
        import time

        time.sleep(float(os.environ.get("SLOW_HASH_DELAY", "0.2")))
        return super().encode_batch(texts, batch_size)


class LedgerWatchingEncoder(HashEncoder):
    """HashEncoder that notes, at each call, how many chunks the ledger holds written but not
    done (EMBEDFLEET_DATABASE_URL, one job in it), one line per call in WATCH_FILE, and takes
    WATCH_DELAY seconds: for the embedded run's back-pressure."""

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        import os
        import time

        from sqlalchemy import func, select

        from embedfleet.store.engine import get_engine
        from embedfleet.store.ledger import OPEN_CHUNK_STATES
        from embedfleet.store.schema import chunks

        with get_engine(os.environ["EMBEDFLEET_DATABASE_URL"]).connect() as conn:
            ahead = conn.execute(select(func.count()).where(chunks.c.state.in_(OPEN_CHUNK_STATES))).scalar_one()
        with open(os.environ["WATCH_FILE"], "a") as out:
            out.write(f"{ahead}\n")
        time.sleep(float(os.environ.get("WATCH_DELAY", "0")))
        return super().encode_batch(texts, batch_size)


class PoolProbeEncoder(HashEncoder):
    """HashEncoder for the encoder pool's tests: counts its batches through on_batch (one
    call per 4 texts), notes its pid in PROBE_DIR at each call, and on a marker in a text
    raises ValueError ("RAISE"), raises a CPU out-of-memory RuntimeError ("OOM"), exits its
    process with status 3 ("EXIT") or sleeps for an hour ("HANG")."""

    on_batch = None

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        import os
        from pathlib import Path

        if probe := os.environ.get("PROBE_DIR"):
            (Path(probe) / str(os.getpid())).touch()
        if any("EXIT" in t for t in texts):
            os._exit(3)
        if any("HANG" in t for t in texts):
            import time

            time.sleep(3600)
        if any("RAISE" in t for t in texts):
            raise ValueError(f"cannot encode {len(texts)} texts")
        if any("OOM" in t for t in texts) and len(texts) > 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        vectors = super().encode_batch(texts, batch_size)
        for start in range(0, len(texts), 4):
            if self.on_batch is not None:
                self.on_batch(len(texts[start:start + 4]))
        return vectors
