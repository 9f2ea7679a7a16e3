"""Send again what the broker lost (`resume`), and send dead letters back through the normal path
(`dlq redrive`). Both work from SQL, the source of truth; neither needs the model."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import Engine

from ..chunks.dead_letters import Letter, id_altered
from ..chunks.sending import Sender
from ..corpus.chunking import chunk_records
from ..corpus.records import Record
from ..store.collections import get_collection, get_version
from ..store.ledger import close_submission, create_job
from .submit import send_chunks

log = logging.getLogger(__name__)


def redrive(engine: Engine, send: Sender, letters: Sequence[Letter], chunk_size: int, token_budget: int,
            window: int) -> list[str]:
    """A new job per collection version holding the letters' records at their original
    positions. Each letter is marked resolved when its record is stored. Returns the job ids."""
    by_version: dict[str, list[Letter]] = defaultdict(list)
    for letter in letters:
        if letter.resolved_at is None and id_altered(letter):  # it would be stored under the wrong id
            log.warning("dead letter %d not redriven: its record id was altered to fit storage", letter.id)
        elif letter.resolved_at is None:
            by_version[letter.version_key].append(letter)
    job_ids = []
    for version_key, group in by_version.items():
        with engine.connect() as conn:
            version = get_version(conn, version_key)
        # One record per id: a record dead-lettered twice is redriven once.
        latest = {letter.record_id: letter for letter in group}
        job_id = create_job(engine, version.collection, version.key, version.model, source="dlq redrive",
                            options={"redrive_letters": [letter.id for letter in group]},
                            records_read=len(latest), skipped_invalid=0)
        records = [Record(letter.record_id, letter.position, letter.text, letter.content_hash, 0)
                   for letter in sorted(latest.values(), key=lambda letter: letter.position)]
        # Letters keep the text, not the metadata: a redriven record's metadata stays empty
        # until the next reindex reads its source again.
        store_text = bool(get_collection(engine, version.collection).options.get("store_text"))
        chunks, truncated = send_chunks(engine, send, job_id, version,
                                        chunk_records(records, chunk_size, token_budget, window), window,
                                        store_text=store_text)
        close_submission(engine, job_id, chunks_total=chunks, truncated=truncated, changes={"updated": len(records)})
        log.info("redrive job %s: %d records of %s", job_id, len(records), version_key)
        job_ids.append(job_id)
    return job_ids
