"""Submit a job: validate the corpus, write the job, then per chunk a ledger row and its message."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
from sqlalchemy import Engine

from ..chunks.messages import ChunkTexts
from ..chunks.sending import Sender
from ..corpus.chunking import chunk_records, is_truncated, sort_windows
from ..corpus.readers import Source
from ..corpus.records import FieldSpec, Record
from ..corpus.validation import InvalidInput, check_fields, scan_corpus, valid_records
from ..errors import JobEnded
from ..store.collections import Version, get_version, open_collection
from ..store.ledger import (
    abandon_submission,
    add_chunk,
    check_collection_name,
    close_submission,
    create_job,
    touch_submission,
)
from .incremental import Changes, detect_changes, sweep_deleted

log = logging.getLogger(__name__)

# Called before each chunk is written, with the job id; may block to apply back-pressure.
RoomWaiter = Callable[[str], None]
# Called with the job id once the job row exists, before the first chunk is sent.
JobCallback = Callable[[str], None]


class EmptyCorpus(InvalidInput):
    """No valid record to embed: refused before any collection, version or job is written."""

    def __init__(self, scan: Any) -> None:
        self.scan = scan
        Exception.__init__(
            self,
            f"the corpus has no valid records ({scan.records_read} read, {scan.invalid_count} invalid): "
            "nothing to embed, nothing was written",
        )


class SendFailed(Exception):
    """The broker refused a chunk's message mid-submission; the job is marked abandoned."""


@dataclass(frozen=True)
class JobRequest:
    corpus: Source
    collection: str
    model: str
    spec: FieldSpec = field(default_factory=FieldSpec)
    chunk_size: int = 256
    token_budget: int = 16384
    window: int = 256
    skip_invalid: bool = False
    # "full": delete stored vectors whose ids the source no longer holds.
    sync: str = "none"
    # A migration writes a version of its own, and may switch reads to it when complete.
    version_key: str | None = None
    cutover: bool = False
    # Records sorted by length within windows of this many before chunking (1: corpus order).
    sort_window: int = 4096
    # Keep each record's text beside its vector (spec.metadata_fields keep metadata).
    store_text: bool = False
    # How a new version stores its vectors: auto (pgvector's vector where the server has
    # the extension, else bytea), vector, halfvec or bytea.
    vector_type: str = "auto"
    # Who encodes the job: None for the fleet, "embedded HOST PID" for an embedded run.
    runner: str | None = None

    def options(self) -> dict[str, Any]:
        """What a later reindex needs to read this source the same way."""
        return {
            "id_field": self.spec.id_field,
            "text_fields": list(self.spec.text_fields),
            "chunk_size": self.chunk_size,
            "token_budget": self.token_budget,
            "skip_invalid": self.skip_invalid,
            "sync": self.sync,
            "store_text": self.store_text,
            "metadata_fields": list(self.spec.metadata_fields),
            "vector_type": self.vector_type,
        }


@dataclass(frozen=True)
class Submission:
    job_id: str
    records_read: int
    skipped_invalid: int
    truncated: int
    chunks: int
    invalid_report: str
    changes: Changes = field(default_factory=Changes)

    @property
    def records_sent(self) -> int:
        return self.records_read - self.skipped_invalid


def send_chunks(
    engine: Engine,
    send: Sender,
    job_id: str,
    version: Version,
    chunks: Iterable[list[Record]],
    window: int,
    wait_for_room: RoomWaiter | None = None,
    store_text: bool = False,
) -> tuple[int, int]:
    """Per chunk: its ledger row (with the message), then the message. Returns (chunks, truncated).
    The texts are stored beside the vectors when `store_text`; metadata when the records have it."""
    seq = truncated = 0
    for chunk in chunks:
        encoded = [r for r in chunk if not r.alias]
        keep_metadata = any(r.metadata is not None for r in chunk)
        truncated += sum(is_truncated(r.text, window) for r in encoded)
        message = ChunkTexts(
            job_id=job_id,
            seq=seq,
            version_key=version.key,
            model=version.model,
            ids=[r.record_id for r in encoded],
            positions=[r.position for r in encoded],
            texts=[r.text for r in encoded],
            hashes=[r.content_hash for r in encoded],
            aliases=[[r.record_id, r.position, r.content_hash, r.text, *([r.metadata] if keep_metadata else [])]
                     for r in chunk if r.alias],
            store_text=store_text,
            metadata=[r.metadata for r in encoded] if keep_metadata else None,
        )
        if wait_for_room is not None:
            wait_for_room(job_id)
        # A job cancelled while it is being submitted stops growing: its open chunks are
        # cancelled, and add_chunk adds no new one (in the same statement as the insert).
        if not add_chunk(engine, job_id, seq, len(chunk), msgpack.packb(message.to_wire()),
                         added=sum(r.new for r in chunk)):
            raise JobEnded(f"job {job_id} was cancelled while it was submitted: stopped after {seq} chunks")
        try:
            send(message)
        except Exception as exc:
            raise SendFailed(seq) from exc
        seq += 1
    return seq, truncated


# Seconds between the producer's signs of life while it reads records (touch_submission):
# far below lease_seconds, so a long stretch of unchanged records never looks abandoned.
PRODUCER_BEAT_SECONDS = 10.0


def _keep_alive(engine: Engine, job_id: str, records: Iterator[Record]) -> Iterator[Record]:
    last = time.monotonic()
    for record in records:
        if time.monotonic() - last >= PRODUCER_BEAT_SECONDS:
            touch_submission(engine, job_id)
            last = time.monotonic()
        yield record


def submit(engine: Engine, request: JobRequest, send: Sender, wait_for_room: RoomWaiter | None = None,
           on_job: JobCallback | None = None, broker: str = "the broker",
           before_job: Callable[[], None] | None = None) -> Submission:
    """Validate, write the job, send its chunks. `on_job` hears the job id before any chunk is
    sent, so a producer that dies mid-submission has already said which job it was.
    `before_job` runs once the corpus is valid, before the job exists (its clock starts)."""
    check_collection_name(request.collection)
    check_fields(request.corpus, request.spec)
    scan = scan_corpus(request.corpus, request.spec)
    if scan.invalid_count and not request.skip_invalid:
        raise InvalidInput(scan)
    if scan.records_read - scan.invalid_count <= 0:
        raise EmptyCorpus(scan)
    if scan.invalid_count:
        log.warning("skipping %d invalid records:\n%s", scan.invalid_count, scan.report())
    if before_job is not None:
        before_job()

    if request.version_key is None:
        version = open_collection(engine, request.collection, request.model, request.corpus.spec(), request.options())
    else:
        with engine.connect() as conn:
            version = get_version(conn, request.version_key)
    options = {**request.options(), "cutover": request.cutover}
    job_id = create_job(engine, request.collection, version.key, version.model, source=request.corpus.name,
                        options=options, records_read=scan.records_read, skipped_invalid=scan.invalid_count,
                        runner=request.runner)
    if on_job is not None:
        on_job(job_id)
    changes = Changes()
    records = _keep_alive(engine, job_id,
                          (r for r in valid_records(request.corpus, request.spec, scan) if isinstance(r, Record)))
    changed = detect_changes(engine, version.key, records, scan, changes)
    chunks = chunk_records(sort_windows(changed, request.sort_window), request.chunk_size, request.token_budget,
                           request.window)
    try:
        seq, truncated = send_chunks(engine, send, job_id, version, chunks, request.window, wait_for_room,
                                     store_text=request.store_text)
    except SendFailed as failed:
        # Without this the job would stay `submitting` until the reconciler notices (if beat
        # runs at all). The chunks already sent still complete.
        abandon_submission(engine, job_id)
        raise JobEnded(
            f"{broker} failed while job {job_id} was submitted ({failed.__cause__!s:.200}): the job is marked "
            f"abandoned after {failed.args[0]} chunks were sent. Submit the corpus again when the broker is back: "
            "records already stored are skipped as unchanged."
        ) from failed.__cause__
    if request.sync == "full":
        changes.deleted = sweep_deleted(engine, version.key, scan)
    close_submission(engine, job_id, chunks_total=seq, truncated=truncated, changes=changes.as_dict())
    if truncated:
        log.info("%d records are longer than the model's %d-token window and will be truncated",
                 truncated, request.window)
    return Submission(job_id, scan.records_read, scan.invalid_count, truncated, seq, scan.report(), changes)
