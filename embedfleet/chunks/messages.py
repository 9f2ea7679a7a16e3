"""The two messages that cross the broker, as small dataclasses with a wire form.

Columns, not lists of dicts: msgpack packs them compactly, and vectors travel as one
binary float32 blob (row-major, n x dim), never as JSON lists of floats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import msgpack

# Flower's kwargs column is narrow and cuts long text: what tells rows apart comes first.
SHORT_JOB_ID = 8


def short_job_id(job_id: str) -> str:
    """The job id as progress lines print it (and `status` accepts as a prefix)."""
    return job_id[:SHORT_JOB_ID]


def chunk_label(seq: int, version_key: str, job_id: str, total: int | None = None) -> str:
    """`chunk 3/58 docs job 1a2b3c4d`: the chunk, the collection version it writes, the job.

    `seq` is the ledger's number (the one logs, `status` and `dlq` print), so a row in Flower
    leads to the same chunk everywhere; halves of a crash split have negative seqs. `total`
    only when the sender knows it: a producer streams its corpus and learns the job's chunk
    count when the last chunk is sent, so the first send of a chunk has none."""
    of = f"/{total}" if total else ""
    return f"chunk {seq}{of} {version_key} job {short_job_id(job_id)}"


@dataclass(frozen=True)
class DeadRecord:
    """A record that failed on its own, with what is needed to redrive it: on the wire (a
    chunk's vectors carry their dead records) and as a dead letter is written."""

    record_id: str
    position: int
    text: str
    content_hash: str
    error_type: str
    message: str


@dataclass(frozen=True)
class ChunkTexts:
    """What a producer sends to an encode worker: one chunk of one job."""

    job_id: str
    seq: int
    # Where the vectors go (a collection's version) and the model that must make them.
    version_key: str
    model: str
    ids: list[str]
    positions: list[int]
    texts: list[str]
    hashes: list[str]
    # [record_id, position, content_hash, text(, metadata)] of records whose text repeats an
    # earlier record's in the job: not encoded again; the collector copies the vector by
    # content hash. The text rides along so a failure can still dead-letter it (and so it
    # can be stored, with the metadata, when the collection keeps them).
    aliases: list[list[Any]] = field(default_factory=list)
    # The collection keeps each record's text beside its vector (--store-text).
    store_text: bool = False
    # Each record's metadata (a JSON object), in `ids` order, when the collection keeps it
    # (--metadata-fields); None otherwise.
    metadata: list[Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        # Shallow: asdict() would deep-copy every list of every chunk.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ChunkTexts:
        return cls(**data)

    def label(self, total: int | None = None) -> str:
        """What Flower shows instead of the texts: `chunk 3/58 docs job 1a2b3c4d, 64 records`."""
        records = len(self.ids) + len(self.aliases)
        return f"{chunk_label(self.seq, self.version_key, self.job_id, total)}, {records} records"


@dataclass(frozen=True)
class ChunkVectors:
    """What an encode worker sends to the collector: the chunk's vectors, in its order."""

    job_id: str
    seq: int
    version_key: str
    model: str
    dim: int
    ids: list[str]
    positions: list[int]
    hashes: list[str]
    vectors: bytes  # float32, row-major, len(ids) * dim values
    encode_seconds: float = 0.0
    worker: str = ""
    # Records of the chunk that failed on their own: they become dead letters.
    dead: list[DeadRecord] = field(default_factory=list)
    # Times the chunk was halved after running out of memory.
    splits: int = 0
    aliases: list[list[Any]] = field(default_factory=list)
    # What the collection keeps beside each vector, in `ids` order: the texts when it
    # stores text (store_text), the metadata when it stores metadata; None otherwise.
    store_text: bool = False
    texts: list[str] | None = None
    metadata: list[Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = {f.name: getattr(self, f.name) for f in fields(self)}
        wire["dead"] = [asdict(d) for d in self.dead]
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ChunkVectors:
        dead = [DeadRecord(**d) for d in data.get("dead", [])]
        return cls(**{**data, "dead": dead})

    def label(self, total: int | None = None) -> str:
        return (f"{chunk_label(self.seq, self.version_key, self.job_id, total)}, {len(self.ids)} vectors, "
                f"{len(self.dead)} dead")


# (record id, position, text, content hash): what a chunk's message holds of one record.
RecordText = tuple[str, int, str, str]


def read_payload(payload: bytes) -> tuple[str, list[RecordText]]:
    """A chunk's message as the ledger keeps it (msgpack): its version key and every record
    (the encoded ones, then the repeats) as (id, position, text, content hash)."""
    texts = ChunkTexts.from_wire(msgpack.unpackb(payload))
    records = list(zip(texts.ids, texts.positions, texts.texts, texts.hashes, strict=True))
    records += [(alias[0], alias[1], alias[3], alias[2]) for alias in texts.aliases]
    return texts.version_key, records
