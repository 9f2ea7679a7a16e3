"""What the bench sections share: the report, the corpus they write, and the CLI they run."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedfleet.corpus.readers import Corpus
from embedfleet.corpus.records import FieldSpec, Record
from embedfleet.corpus.validation import valid_records

BIN = Path(sys.executable).parent
SECTIONS = ("batching", "direct", "bf16", "run", "backends", "encoders", "fleet", "layout", "pipeline", "storage",
            "stress", "noop", "memory", "pgvector")


@dataclass
class BenchReport:
    corpus: str
    records: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, section: str, what: str, seconds: float | None = None, records: int | None = None,
            **extra: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"section": section, "what": what}
        if seconds is not None:
            row["seconds"] = round(seconds, 3)
        if seconds and records:
            row["records_per_s"] = round(records / seconds, 1)
        row.update({k: v for k, v in extra.items() if v is not None})
        self.rows.append(row)
        print(f"  {section}: {what}: {json.dumps({k: v for k, v in row.items() if k not in ('section', 'what')})}",
              file=sys.stderr, flush=True)
        return row


def load_records(corpus: str, spec: FieldSpec, limit: int | None) -> list[Record]:
    # Corpus.format is a Literal, the Source protocol's a plain (settable) str: readers.py's to fix.
    records = [r for r in valid_records(Corpus(corpus), spec) if isinstance(r, Record)]
    return records[:limit] if limit else records


def write_corpus(records: list[Record], path: Path, total: int | None = None) -> list[str]:
    """A JSONL corpus of the records' texts, cycled up to total with fresh ids and a number on
    each text, so repeats are not deduplicated away. Returns the ids."""
    total = total or len(records)
    cycled = total != len(records)
    ids = []
    with path.open("w", encoding="utf-8") as out:
        for i in range(total):
            record = records[i % len(records)]
            record_id = f"{record.record_id}-{i}" if cycled else record.record_id
            text = f"{record.text} ({i})" if cycled else record.text
            ids.append(record_id)
            out.write(json.dumps({"id": record_id, "text": text}) + "\n")
    return ids


def latest_job(db_url: str) -> dict[str, Any]:
    from sqlalchemy import select

    from embedfleet.jobs.stats import job_stats
    from embedfleet.store.engine import get_engine
    from embedfleet.store.schema import jobs

    engine = get_engine(db_url)
    with engine.connect() as conn:
        job_id = conn.execute(select(jobs.c.id).order_by(jobs.c.created_at.desc())).scalars().first()
    if job_id is None:
        raise RuntimeError(f"no job in {db_url}")
    return job_stats(engine, job_id).as_dict()


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", **extra}
