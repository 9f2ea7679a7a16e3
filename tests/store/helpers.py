"""Builders the storage tests share: jobs with chunks in the ledger, chunk vectors, stored rows."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
from sqlalchemy import func, select, text

from embedfleet.chunks.messages import ChunkTexts, ChunkVectors
from embedfleet.store import codec
from embedfleet.store.collections import open_collection
from embedfleet.store.ledger import add_chunk, close_submission, create_job
from embedfleet.store.schema import vectors

DIM = 4


SECRET = "TOP-SECRET-CORPUS-TEXT"


def chunk_vectors(job_id: str, seq: int, positions: list[int], model: str = "m") -> ChunkVectors:
    rng = np.random.default_rng(seq)
    matrix = rng.standard_normal((len(positions), DIM)).astype(np.float32)
    return ChunkVectors(
        job_id=job_id, seq=seq, version_key="c1", model=model, dim=DIM,
        ids=[f"r{p}" for p in positions], positions=positions, hashes=["h"] * len(positions),
        vectors=codec.pack(matrix),
    )


def job_with_chunks(engine, chunks: dict[int, list[int]]) -> str:
    version = open_collection(engine, "c1", "m", {}, {})
    job_id = create_job(engine, "c1", version.key, "m", "test", {}, records_read=sum(map(len, chunks.values())),
                        skipped_invalid=0)
    for seq, positions in chunks.items():
        add_chunk(engine, job_id, seq, len(positions), b"payload")
    close_submission(engine, job_id, chunks_total=len(chunks), truncated=0)
    return job_id


def with_aliases(job_id: str, seq: int, positions: list[int], aliases: list[list], dead=()) -> ChunkVectors:
    return dataclasses.replace(chunk_vectors(job_id, seq, positions), aliases=aliases, dead=list(dead))


def rows_in(engine, key: str = "c1") -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(vectors).where(vectors.c.version_key == key)).scalar_one()


def one_chunk_job(engine, ids: list[str], texts: list[str] | None = None) -> tuple[str, ChunkVectors]:
    """A one-chunk job whose ledger row holds the texts, and the chunk's vectors as a worker sends them."""
    version = open_collection(engine, "c1", "m", {}, {})
    job_id = create_job(engine, "c1", version.key, "m", "test", {}, records_read=len(ids), skipped_invalid=0)
    positions = list(range(len(ids)))
    texts = texts or [f"{SECRET} {i}" for i in positions]
    hashes = [f"h{i}" for i in positions]
    message = ChunkTexts(job_id=job_id, seq=0, version_key=version.key, model="m", ids=ids, positions=positions,
                         texts=texts, hashes=hashes)
    add_chunk(engine, job_id, 0, len(ids), msgpack.packb(message.to_wire()))
    close_submission(engine, job_id, chunks_total=1, truncated=0)
    matrix = np.random.default_rng(0).standard_normal((len(ids), DIM)).astype(np.float32)
    return job_id, ChunkVectors(job_id=job_id, seq=0, version_key=version.key, model="m", dim=DIM, ids=ids,
                                positions=positions, hashes=hashes, vectors=codec.pack(matrix))


def stored_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(vectors.c.record_id).order_by(vectors.c.position)).scalars())


def refuse_ids_starting_bad(engine) -> None:
    """SQLite stores any id; a trigger makes it refuse some, as PostgreSQL refuses long ids."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER refuse_bad BEFORE INSERT ON vectors WHEN NEW.record_id LIKE 'bad%' "
                          "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"))


def live_job(engine, n_chunks: int = 2) -> tuple[str, list[ChunkTexts]]:
    from embedfleet.store.collections import open_collection

    version = open_collection(engine, "live", "m", source={}, options={})
    job_id = create_job(engine, "live", version.key, "m", "test", {}, records_read=4 * n_chunks, skipped_invalid=0)
    texts = []
    for seq in range(n_chunks):
        ids = [f"r{seq}-{i}" for i in range(4)]
        chunk = ChunkTexts(job_id, seq, version.key, "m", ids, [seq * 4 + i for i in range(4)], ids, ["h"] * 4)
        add_chunk(engine, job_id, seq, 4, msgpack.packb(chunk.to_wire()))
        texts.append(chunk)
    close_submission(engine, job_id, n_chunks, 0)
    return job_id, texts
