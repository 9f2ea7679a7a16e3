"""Submit a job: validate the corpus, write the job, then per chunk a ledger row and its message."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from celery import Celery
from sqlalchemy import Engine

from config.messages import ChunkTexts
from config.queues import ENCODE_TASK
from producers.chunking import chunk_records, is_truncated
from producers.readers import Corpus
from producers.records import FieldSpec, Record
from producers.validation import InvalidInput, scan_corpus, valid_records
from storage.ledger import add_chunk, check_collection_name, close_submission, create_job

log = logging.getLogger(__name__)

Sender = Callable[[ChunkTexts], None]
# Called before each chunk is written, with the job id; may block to apply back-pressure.
RoomWaiter = Callable[[str], None]


@dataclass(frozen=True)
class JobRequest:
    corpus: Corpus
    collection: str
    model: str
    spec: FieldSpec = field(default_factory=FieldSpec)
    chunk_size: int = 256
    token_budget: int = 16384
    window: int = 256
    skip_invalid: bool = False

    def options(self) -> dict[str, Any]:
        """What a later reindex needs to read this source the same way."""
        return {
            "format": self.corpus.format,
            "id_field": self.spec.id_field,
            "text_fields": list(self.spec.text_fields),
            "chunk_size": self.chunk_size,
            "token_budget": self.token_budget,
            "skip_invalid": self.skip_invalid,
        }


@dataclass(frozen=True)
class Submission:
    job_id: str
    records_read: int
    skipped_invalid: int
    truncated: int
    chunks: int
    invalid_report: str

    @property
    def records_sent(self) -> int:
        return self.records_read - self.skipped_invalid


def celery_sender(app: Celery) -> Sender:
    """Send by task name, so the producer needs no model and no worker code."""

    def send(chunk: ChunkTexts) -> None:
        # kwargsrepr: Flower and logs show job and chunk, never the texts.
        app.send_task(ENCODE_TASK, kwargs={"chunk": chunk.to_wire()}, kwargsrepr=chunk.label())

    return send


def send_chunks(
    engine: Engine,
    send: Sender,
    job_id: str,
    collection: str,
    chunks: Iterable[list[Record]],
    window: int,
    wait_for_room: RoomWaiter | None = None,
) -> tuple[int, int]:
    """Per chunk: its ledger row (with the message), then the message. Returns (chunks, truncated)."""
    seq = truncated = 0
    for chunk in chunks:
        truncated += sum(is_truncated(r.text, window) for r in chunk)
        message = ChunkTexts(
            job_id=job_id,
            seq=seq,
            collection=collection,
            ids=[r.record_id for r in chunk],
            positions=[r.position for r in chunk],
            texts=[r.text for r in chunk],
            hashes=[r.content_hash for r in chunk],
        )
        if wait_for_room is not None:
            wait_for_room(job_id)
        add_chunk(engine, job_id, seq, len(chunk), msgpack.packb(message.to_wire()))
        send(message)
        seq += 1
    return seq, truncated


def submit(engine: Engine, request: JobRequest, send: Sender, wait_for_room: RoomWaiter | None = None) -> Submission:
    check_collection_name(request.collection)
    scan = scan_corpus(request.corpus, request.spec)
    if scan.invalid_count and not request.skip_invalid:
        raise InvalidInput(scan)
    if scan.invalid_count:
        log.warning("skipping %d invalid records:\n%s", scan.invalid_count, scan.report())

    job_id = create_job(
        engine,
        request.collection,
        request.model,
        source=request.corpus.name,
        options=request.options(),
        records_read=scan.records_read,
        skipped_invalid=scan.invalid_count,
    )
    records = (r for r in valid_records(request.corpus, request.spec, scan) if isinstance(r, Record))
    chunks = chunk_records(records, request.chunk_size, request.token_budget, request.window)
    seq, truncated = send_chunks(engine, send, job_id, request.collection, chunks, request.window, wait_for_room)
    close_submission(engine, job_id, chunks_total=seq, truncated=truncated)
    if truncated:
        log.info("%d records are longer than the model's %d-token window and will be truncated", truncated, request.window)
    return Submission(job_id, scan.records_read, scan.invalid_count, truncated, seq, scan.report())
