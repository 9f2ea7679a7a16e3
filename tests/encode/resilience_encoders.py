"""Fault encoders without a real model (fast pool restarts), loaded via EMBEDFLEET_ENCODER:
records that exit, hang or kill the collector, for tests/fleet/test_resilience.py."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedfleet.encode.encoder import NoopEncoder

CRASH = "CRASH-MARKER"
POISON = "POISON-MARKER"


class NoopCrash(NoopEncoder):
    """Exits its process on any batch holding the crash marker; raises on the poison marker."""

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if any(CRASH in t for t in texts):
            os._exit(137)
        if any(POISON in t for t in texts):
            raise ValueError("poison")
        time.sleep(float(os.environ.get("RT_DELAY", "0")))
        return super().encode_batch(texts, batch_size)


class DieAfterSplit(NoopCrash):
    """NoopCrash, and the pool process is killed (as the OOM killer would) right after a crash
    split is committed to the ledger, before its halves are sent -- once in the whole fleet."""

    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings)
        import embedfleet.fleet.tasks as tasks

        original = tasks.celery_sender
        flag = Path(os.environ["RT_STATE_DIR"]) / "died-after-split"

        def sender(app):  # type: ignore[no-untyped-def]
            send = original(app)

            def wrapped(chunk):  # type: ignore[no-untyped-def]
                if chunk.seq < 0 and not flag.exists():
                    flag.write_text("x")
                    os._exit(137)
                return send(chunk)
            return wrapped

        tasks.celery_sender = sender


HANG = "HANG-MARKER"


class NoopHang(NoopCrash):
    """A record that never returns (a deadlock or endless loop in native code, a tokenizer
    pathology): the process stays alive and its node keeps beating."""

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if any(HANG in t for t in texts):
            while True:
                time.sleep(1)
        return super().encode_batch(texts, batch_size)


class CollectorCrash(NoopCrash):
    """The collector's process dies (OOM in the bulk upsert, a segfault in the driver) on the
    chunk that holds the record id 'boom'; encoding is fine."""

    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings)
        import embedfleet.fleet.tasks as tasks

        original = tasks.store_chunk

        def store_chunk(engine, chunk, last_attempt=True, **kwargs):  # type: ignore[no-untyped-def]
            if "boom" in chunk.ids:
                os._exit(137)
            return original(engine, chunk, last_attempt=last_attempt, **kwargs)

        tasks.store_chunk = store_chunk
