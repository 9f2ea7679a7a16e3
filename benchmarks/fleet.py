"""Bench sections that start real worker processes, or write to real databases."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BIN, BenchReport, cli_env, latest_job, write_corpus
from embedfleet.settings import Settings

NOOP = "embedfleet.encode.encoder:NoopEncoder"


@contextlib.contextmanager
def fleet_workers(broker_url: str, db_url: str, processes: int, threads: int, **env: str) -> Iterator[None]:
    """`processes` single-process workers (or one worker of `processes` pool children when
    threads > 1 is not asked), ready when they answer a ping; their queues purged after."""
    from celery import Celery

    from embedfleet.fleet.celeryconfig import celery_config

    control = Celery("bench-control")
    control.conf.update(celery_config(Settings(broker_url=broker_url)))
    control.control.purge()
    worker_env = cli_env(EMBEDFLEET_BROKER_URL=broker_url, EMBEDFLEET_DATABASE_URL=db_url,
                         EMBEDFLEET_TORCH_THREADS=str(threads), **env)
    procs = [subprocess.Popen([str(BIN / "embedfleet"), "worker", "-c", "1",
                               "-n", f"bench{i}-{uuid.uuid4().hex[:6]}@%h",
                               "--without-mingle", "--without-gossip", "-l", "WARNING"],
                              env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(processes)]
    try:
        deadline = time.monotonic() + 180
        while len(control.control.ping(timeout=1.0) or []) < processes:
            if time.monotonic() > deadline:
                raise RuntimeError("bench workers did not start")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        control.control.purge()
        control.close()


def submit_and_wait(corpus: Path, broker_url: str, db_url: str, **env: str) -> dict[str, Any]:
    subprocess.run([str(BIN / "embedfleet"), "submit", str(corpus), "--collection", "bench", "--wait"], check=True,
                   capture_output=True, text=True,
                   env=cli_env(EMBEDFLEET_BROKER_URL=broker_url, EMBEDFLEET_DATABASE_URL=db_url, **env))
    return latest_job(db_url)


def bench_fleet(report: BenchReport, corpus: Path, records: int, baseline: float | None, work: Path, broker_url: str,
                processes: int, threads: int, section: str = "fleet") -> float:
    db = f"sqlite:///{work / f'{section}-{processes}x{threads}.db'}"
    with fleet_workers(broker_url, db, processes, threads):
        stats = submit_and_wait(corpus, broker_url, db)
    if stats["stored"] != records:
        raise RuntimeError(f"fleet stored {stats['stored']} of {records}: {stats}")
    report.add(section, f"{processes} worker process(es) x {threads} encoder thread(s) on Redis, job", stats["seconds"],
               records, ratio=round(baseline / stats["seconds"], 2) if baseline else None)
    return float(stats["seconds"])


def bench_layout(report: BenchReport, records: list[Any], work: Path, broker_url: str) -> None:
    """Processes against threads on this machine's cores, on the first 2,000 records."""
    import os

    sample = records[:2000]
    corpus = work / "layout.jsonl"
    write_corpus(sample, corpus)
    cores = os.cpu_count() or 1
    one_by_n = bench_fleet(report, corpus, len(sample), None, work, broker_url, 1, cores, section="layout")
    n_by_one = bench_fleet(report, corpus, len(sample), None, work, broker_url, cores, 1, section="layout")
    report.add("layout", f"{cores} processes x 1 thread against 1 process x {cores} threads",
               ratio=round(one_by_n / n_by_one, 3))


@contextlib.contextmanager
def scratch_postgres(pg_url: str) -> Iterator[str]:
    """A database of the bench's own on the server of pg_url, dropped afterwards."""
    import psycopg

    name = f"embedfleet_bench_{uuid.uuid4().hex[:8]}"
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, query = admin.partition("?")  # a unix-socket server: ...?host=/dir
    try:
        yield f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
    finally:
        from embedfleet.store.engine import _engines

        for key in [k for k in _engines if name in k[1]]:
            _engines.pop(key).dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_pipeline(report: BenchReport, records: list[Any], work: Path, broker_url: str, pg_url: str,
                   total: int = 100_000) -> None:
    """The ceiling the fleet puts on a fast GPU: a no-op encoder, so every second goes to the
    producer, Redis, the collector and PostgreSQL."""
    corpus = work / "pipeline.jsonl"
    write_corpus(records, corpus, total=total)
    # The same records with the last 40% repeating the texts of the first 40%: each repeat
    # is stored by copying its first record's vector (the collector's look-up by hash).
    repeats = work / "pipeline-repeats.jsonl"
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    first = int(total * 0.6)
    with repeats.open("w", encoding="utf-8") as out:
        out.writelines(lines[:first])
        for i in range(total - first):
            out.write(json.dumps({"id": f"repeat-{i}", "text": json.loads(lines[i])["text"]}) + "\n")
    for source, chunk_size, what in ((corpus, 256, ""), (corpus, 1024, ""),
                                     (repeats, 256, ", 40% repeated texts")):
        with scratch_postgres(pg_url) as db:
            with fleet_workers(broker_url, db, 2, 1, EMBEDFLEET_ENCODER=NOOP):
                stats = submit_and_wait(source, broker_url, db, EMBEDFLEET_CHUNK_SIZE=str(chunk_size))
            consume = consume_seconds(db, stats["job_id"])
        if stats["stored"] + stats["skipped"] != total:
            raise RuntimeError(f"pipeline stored {stats['stored']} of {total}: {stats}")
        report.add("pipeline", f"no-op encoder, Redis -> collector -> PostgreSQL, chunks of {chunk_size}{what}",
                   stats["seconds"], total, stored=stats["stored"], deduplicated=stats["deduplicated"],
                   consume_records_per_s=round(total / consume, 1))


def consume_seconds(db_url: str, job_id: str) -> float:
    """From the first chunk an encode worker took to the job's end: the workers' side alone
    (the job's own seconds also hold the producer's validation pass)."""
    from sqlalchemy import func, select

    from embedfleet.store.engine import get_engine
    from embedfleet.store.schema import chunks, jobs

    with get_engine(db_url).connect() as conn:
        first = conn.execute(select(func.min(chunks.c.started_at)).where(chunks.c.job_id == job_id)).scalar_one()
        finished = conn.execute(select(jobs.c.finished_at).where(jobs.c.id == job_id)).scalar_one()
    return float(finished - first)


def bench_storage(report: BenchReport, work: Path, pg_url: str, total: int = 100_000, chunk: int = 1024) -> None:
    """store_chunk alone: vectors/s into SQLite and PostgreSQL, chunk by chunk as the collector does."""
    from embedfleet.chunks.collect import store_chunk
    from embedfleet.chunks.messages import ChunkVectors
    from embedfleet.store import codec
    from embedfleet.store.collections import open_collection
    from embedfleet.store.engine import get_engine
    from embedfleet.store.ledger import add_chunk, close_submission, create_job

    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((chunk, 384)).astype(np.float32)
    blob = codec.pack(matrix / np.linalg.norm(matrix, axis=1, keepdims=True))
    with scratch_postgres(pg_url) as pg:
        for name, url in (("SQLite", f"sqlite:///{work / 'storage.db'}"), ("PostgreSQL", pg)):
            engine = get_engine(url)
            version = open_collection(engine, "bench", "m", {}, {})
            job_id = create_job(engine, "bench", version.key, "m", "bench", {}, total, 0)
            seqs = range(total // chunk)
            for seq in seqs:
                add_chunk(engine, job_id, seq, chunk, b"")
            close_submission(engine, job_id, len(seqs), 0)
            started = time.perf_counter()
            for seq in seqs:
                ids = [f"r{seq}-{i}" for i in range(chunk)]
                store_chunk(engine, ChunkVectors(job_id, seq, version.key, "m", 384, ids,
                                                 list(range(seq * chunk, (seq + 1) * chunk)), ["h"] * chunk, blob))
            seconds = time.perf_counter() - started
            report.add("storage", f"{name}: store_chunk of {len(seqs) * chunk:,} vectors (dim 384, {chunk} a chunk)",
                       seconds, len(seqs) * chunk)
