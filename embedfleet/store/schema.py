"""SQLAlchemy 2.x schema. SQL is the source of truth; the broker is only transport.

Times are float seconds since the epoch: the same on SQLite and PostgreSQL, and rates
and ETAs are plain subtraction.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

collections = Table(
    "collections",
    metadata,
    # What users name. Its vectors live in versions; reads go to the current one.
    Column("name", String(64), primary_key=True),
    Column("current_key", String(80), nullable=False),
    # The version a rollback returns to, until it is dropped.
    Column("previous_key", String(80), nullable=True),
    # The source and options the collection was created from: what `reindex` re-runs.
    Column("source", JSON, nullable=False, default=dict),
    Column("options", JSON, nullable=False, default=dict),
    # Set atomically by the scheduled reindex: two beats firing at once start one job.
    Column("last_reindex_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
)

versions = Table(
    "versions",
    metadata,
    # Storage key of one version: "<name>" for the first, "<name>__v<N>" after migrations.
    Column("key", String(80), primary_key=True),
    Column("collection", String(64), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    # One model per version: a job can never mix models in one version.
    Column("model", String(512), nullable=False),
    # Unknown until the first chunk is collected: producers never load the model.
    Column("dim", Integer, nullable=True),
    Column("normalized", Boolean, nullable=False, default=True),
    # ready once a job filled it completely; dropped versions lose their vectors.
    Column("state", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    # How its vectors are stored: bytea (float32 bytes), or pgvector's vector or halfvec
    # (store/pgvector.py). NULL in a database made before pgvector support: bytea.
    Column("storage", String(16), nullable=True),
    # Seconds its HNSW index took to build; NULL until built (or for bytea).
    Column("index_seconds", Float, nullable=True),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("collection", String(64), ForeignKey("collections.name"), nullable=False),
    Column("version_key", String(80), ForeignKey("versions.key"), nullable=False),
    Column("model", String(512), nullable=False),
    # submitting -> running (every chunk is in the ledger) -> done
    Column("state", String(16), nullable=False),
    Column("source", Text, nullable=False, default=""),
    Column("options", JSON, nullable=False, default=dict),
    Column("records_read", Integer, nullable=False, default=0),
    Column("skipped_invalid", Integer, nullable=False, default=0),
    Column("truncated", Integer, nullable=False, default=0),
    # Change detection against the target version: new ids, changed texts, cache hits
    # (same text, same model: skipped), rows removed under --sync full, and records whose
    # text repeats an earlier record's in the job (embedded once, stored for each).
    Column("added", Integer, nullable=False, default=0),
    Column("updated", Integer, nullable=False, default=0),
    Column("unchanged", Integer, nullable=False, default=0),
    Column("deleted", Integer, nullable=False, default=0),
    Column("deduplicated", Integer, nullable=False, default=0),
    Column("chunks_total", Integer, nullable=False, default=0),
    # Transient failures retried, and chunks given up on after the last retry.
    Column("retries", Integer, nullable=False, default=0),
    Column("giveups", Integer, nullable=False, default=0),
    # Chunks re-sent from the ledger by `resume` or the reconciler.
    Column("resends", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    # The producer's last sign of life while it submits: it may read a long stretch of
    # unchanged records without sending a chunk, and must not look dead meanwhile.
    Column("producer_seen_at", Float, nullable=True),
    # Who encodes the job: NULL for the fleet, "embedded HOST PID" for an embedded run's
    # in-process worker (no heartbeat row: "no live worker" does not apply to it).
    Column("runner", String(300), nullable=True),
)

chunks = Table(
    "chunks",
    metadata,
    Column("job_id", String(32), ForeignKey("jobs.id"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    # queued -> done: every record stored or dead-lettered, committed with the vectors.
    Column("state", String(16), nullable=False),
    Column("records", Integer, nullable=False),
    # Of them, records new to the version (the rest replace a stored vector): what a job's
    # `added` counts once the chunk is stored. NULL for halves of a split chunk and chunks of
    # older versions (the split chunk's own row keeps the count).
    Column("added", Integer, nullable=True),
    Column("stored", Integer, nullable=False, default=0),
    Column("dead", Integer, nullable=False, default=0),
    # Times an encode worker took the chunk; past the cap it is dead-lettered, not looped.
    Column("deliveries", Integer, nullable=False, default=0),
    # Times a collector took the chunk's vectors: a collect that kills its process (OOM
    # during the upsert, a driver crash) is redelivered; past the cap its records are dead.
    Column("collects", Integer, nullable=True),
    # Times the chunk (or a part) was halved after running out of memory.
    Column("splits", Integer, nullable=False, default=0),
    Column("started_at", Float, nullable=True),
    # The chunk's message (msgpack), kept until it is done so `resume` can re-send it
    # after the broker lost it, whatever the source was (stdin included).
    Column("payload", LargeBinary, nullable=True),
    Column("sent_at", Float, nullable=True),
    Column("done_at", Float, nullable=True),
    Column("encode_seconds", Float, nullable=True),
    Column("worker", String(255), nullable=True),
    # The incarnation (workers.incarnation) of the node that last received the chunk: when
    # that node stops beating, a sweep re-sends the chunk from payload (chunks/liveness.py).
    Column("holder", String(32), nullable=True),
    # Set on the halves of a chunk split after its worker kept dying (their seq is negative).
    Column("parent_seq", Integer, nullable=True),
    Index("ix_chunks_job_state", "job_id", "state"),
    Index("ix_chunks_holder_state", "holder", "state"),
)

vectors = Table(
    "vectors",
    metadata,
    Column("version_key", String(80), primary_key=True),
    Column("record_id", String(512), primary_key=True),
    # Order is data: readers and exports order by the record's position in the corpus.
    Column("position", BigInteger, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("model", String(512), nullable=False),
    # float32, little-endian, row-major: what crossed the broker, stored as is.
    Column("embedding", LargeBinary, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Kept beside the vector when the collection asks (--store-text, --metadata-fields), so
    # search results and exports can be read by a person; NULL otherwise.
    Column("text", Text, nullable=True),
    Column("metadata", JSON().with_variant(JSONB(), "postgresql"), nullable=True),
    Index("ix_vectors_version_position", "version_key", "position"),
    # Identical texts are embedded once: later records copy the vector by content hash.
    Index("ix_vectors_version_hash", "version_key", "content_hash"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), ForeignKey("jobs.id"), nullable=False, index=True),
    Column("chunk_seq", Integer, nullable=False),
    Column("version_key", String(80), nullable=False),
    Column("record_id", String(512), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("text", Text, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("error_type", String(255), nullable=False),
    Column("message", Text, nullable=False),
    Column("attempts", Integer, nullable=False, default=1),
    Column("created_at", Float, nullable=False),
    # Set when a redrive stored the record: the letter stays as history.
    Column("resolved_at", Float, nullable=True),
    Column("redrive_job", String(32), nullable=True),
    Index("ix_dead_letters_open", "version_key", "resolved_at", "record_id"),
)

workers = Table(
    "workers",
    metadata,
    # One row per start of a worker node: a node restarted under the same name is a new
    # incarnation, so it is never mistaken for the one that died.
    Column("incarnation", String(32), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    # The database's clock (hosts' clocks differ), seconds since the epoch: the first beat,
    # the last beat, and the start of the current unbroken run of beats.
    Column("started_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("up_since", Float, nullable=False),
    # The queues the node consumes, comma-separated (NULL: a node from before this column,
    # taken to consume them all): `status` says when no live node consumes `embed`.
    Column("queues", Text, nullable=True),
)
