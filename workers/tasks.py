"""The Celery tasks: encode a whole chunk, then collect its vectors into SQL."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from sqlalchemy.exc import OperationalError

from config.celery_app import app
from config.messages import ChunkTexts, ChunkVectors
from config.queues import COLLECT_TASK, ENCODE_TASK
from config.settings import get_settings
from storage import codec
from storage.engine import get_engine
from storage.vectors import store_chunk
from workers.resident import get_encoder

log = logging.getLogger(__name__)

# Failures that pass on their own: the broker or database went away for a moment,
# SQLite was busy. They retry with exponential backoff and jitter; anything else does not.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OperationalError)
RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": get_settings().max_retries,
    "acks_late": True,
}


@app.task(name=ENCODE_TASK, bind=True, **RETRY_OPTIONS)
def encode_chunk(self: Task, chunk: dict[str, Any]) -> None:
    texts = ChunkTexts.from_wire(chunk)
    encoder = get_encoder()
    started = time.perf_counter()
    matrix = encoder.encode_batch(texts.texts)
    seconds = time.perf_counter() - started
    if matrix.shape != (len(texts.ids), encoder.dimension):
        raise ValueError(f"encoder returned shape {matrix.shape} for {len(texts.ids)} records")
    vectors = ChunkVectors(
        job_id=texts.job_id,
        seq=texts.seq,
        collection=texts.collection,
        model=encoder.model_name,
        dim=encoder.dimension,
        ids=texts.ids,
        positions=texts.positions,
        hashes=texts.hashes,
        vectors=codec.pack(matrix),
        encode_seconds=seconds,
        worker=str(self.request.hostname or ""),
    )
    app.send_task(COLLECT_TASK, kwargs={"chunk": vectors.to_wire()}, kwargsrepr=vectors.label())
    log.info(
        "encoded job=%s chunk=%d records=%d seconds=%.3f device=%s",
        texts.job_id, texts.seq, len(texts.ids), seconds, encoder.device,
    )


@app.task(name=COLLECT_TASK, bind=True, **RETRY_OPTIONS)
def collect_chunk(self: Task, chunk: dict[str, Any]) -> int:
    vectors = ChunkVectors.from_wire(chunk)
    return store_chunk(get_engine(get_settings().database_url), vectors)
