"""Recovery from the ledger: re-sending open chunks, and redriving dead letters."""

from __future__ import annotations

from embedfleet.chunks.dead_letters import list_letters
from embedfleet.chunks.messages import ChunkTexts
from embedfleet.store.engine import get_engine
from tests.store.helpers import one_chunk_job


def test_redrive_skips_letters_whose_id_was_altered(sqlite_url):
    """A letter whose id had to be altered to fit storage is not redriven (it would store the vector
    under the wrong id); the others are."""
    from embedfleet.chunks.dead_letters import insert_letters
    from embedfleet.chunks.messages import DeadRecord
    from embedfleet.jobs.redrive import redrive

    engine = get_engine(sqlite_url)
    job_id, _ = one_chunk_job(engine, ["x"])
    with engine.begin() as conn:
        insert_letters(conn, job_id, 0, "c1", [DeadRecord("fine", 0, "t0", "h0", "StorageRejected", "m"),
                                              DeadRecord("a\x00b", 1, "t1", "h1", "StorageRejected", "m")], 1)
    sent: list[ChunkTexts] = []
    assert len(redrive(engine, sent.append, list_letters(engine), 16, 4096, 256)) == 1
    assert [i for chunk in sent for i in chunk.ids] == ["fine"]
