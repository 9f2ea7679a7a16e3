"""Figures of a job derived from the ledger (latency, utilisation, error and cache rates),
and a Prometheus collector that exports them for recent and running jobs.

Pure SQL plus numpy: a monitoring host needs no model, and the ledger stays the one source
of truth, so a restarted exporter loses nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Engine, and_, func, or_, select

from ..store.ledger import OPEN_CHUNK_STATES
from ..store.schema import chunks, jobs
from .stats import JobStats, job_stats

log = logging.getLogger(__name__)

ACTIVE_STATES = ("submitting", "running")


def job_metrics(engine: Engine, job_id: str, stats: JobStats | None = None) -> dict[str, Any]:
    """Flat, JSON-able figures for one job, made to merge into `status --json`.

    - encode_p50_s, encode_p95_s: per-chunk time inside the encoder, over the done chunks
      (None before the first chunk is done).
    - worker_utilisation: per worker name, seconds spent encoding over the job's wall time.
      A worker name covers all its processes, so a `-c 2` worker can reach 2.0.
    - error_rate: dead / (stored + dead), the share of finished records that were dead-lettered.
    - cache_hit_rate: records skipped as unchanged (same text, same version) / records read.

    `stats` is the job's `job_stats`, when the caller has it already (it raises
    LedgerError for an unknown job).
    """
    stats = stats or job_stats(engine, job_id)
    with engine.connect() as conn:
        rows = conn.execute(
            select(chunks.c.worker, chunks.c.encode_seconds).where(
                and_(chunks.c.job_id == job_id, chunks.c.state.notin_(OPEN_CHUNK_STATES),
                     chunks.c.encode_seconds.is_not(None))
            )
        ).all()
    seconds = np.fromiter((r.encode_seconds for r in rows), dtype=np.float64, count=len(rows))
    p50, p95 = (np.percentile(seconds, [50, 95]).tolist() if len(seconds) else (None, None))
    wall = (stats.finished_at or time.time()) - stats.created_at
    stored, dead = stats.stored, stats.dead
    busy: dict[str, float] = {}
    for row in rows:
        name = row.worker or "unknown"
        busy[name] = busy.get(name, 0.0) + float(row.encode_seconds)
    return {
        "encode_p50_s": None if p50 is None else round(p50, 4),
        "encode_p95_s": None if p95 is None else round(p95, 4),
        "worker_utilisation": {w: round(b / wall, 4) if wall > 0 else 0.0 for w, b in sorted(busy.items())},
        "error_rate": round(dead / (stored + dead), 6) if stored + dead else 0.0,
        "cache_hit_rate": round(stats.unchanged / stats.records_read, 6) if stats.records_read else 0.0,
    }


def recent_job_ids(engine: Engine, limit: int = 20) -> list[str]:
    """The newest `limit` jobs, plus any older job still submitting or running, newest first."""
    with engine.connect() as conn:
        newest = select(jobs.c.id, jobs.c.created_at).order_by(jobs.c.created_at.desc()).limit(limit).subquery()
        rows = conn.execute(
            select(jobs.c.id).where(or_(jobs.c.id.in_(select(newest.c.id)), jobs.c.state.in_(ACTIVE_STATES)))
            .order_by(jobs.c.created_at.desc())
        ).all()
    return [r.id for r in rows]


class LedgerCollector:
    """A prometheus_client collector: reads the ledger on every scrape.

    Finished jobs never change, so their figures are kept after the first read; a scrape
    reads only the running jobs and the new ones.
    """

    PREFIX = "embedfleet_job_"

    def __init__(self, engine: Engine, limit: int = 20, dead_after: float = 15.0) -> None:
        self.engine = engine
        self.limit = limit
        # A heartbeat older than this is a dead worker (settings.dead_after_seconds).
        self.dead_after = dead_after
        self._done: dict[str, tuple[JobStats, dict[str, Any]]] = {}

    def _figures(self) -> list[tuple[JobStats, dict[str, Any]]]:
        out = []
        ids = recent_job_ids(self.engine, self.limit)
        for job_id in ids:
            cached = self._done.get(job_id)
            if cached is None:
                stats = job_stats(self.engine, job_id)
                cached = (stats, job_metrics(self.engine, job_id, stats))
                if stats.state == "done":
                    self._done[job_id] = cached
            out.append(cached)
        # Forget finished jobs that left the window, so memory stays bounded.
        for job_id in set(self._done) - set(ids):
            del self._done[job_id]
        return out

    def _fleet(self) -> Iterator[GaugeMetricFamily]:
        """What the fleet looks like now, one series each (no job label, so the number of
        series stays fixed however many jobs run): live workers per queue they consume,
        chunks waiting and being encoded, jobs running. The ledger's view of the queues: a
        chunk is queued from its send to its start, whichever broker carries it."""
        from ..chunks.liveness import ALL_QUEUES, live_workers_by_queue

        with self.engine.connect() as conn:
            per_queue = live_workers_by_queue(conn, self.dead_after)
            open_chunks = conn.execute(
                select(func.count().filter(chunks.c.started_at.is_(None)),
                       func.count().filter(chunks.c.started_at.is_not(None)))
                .select_from(chunks.join(jobs, jobs.c.id == chunks.c.job_id))
                .where(and_(chunks.c.state.in_(OPEN_CHUNK_STATES), jobs.c.state.in_(ACTIVE_STATES)))
            ).one()
            running = conn.execute(select(func.count()).select_from(jobs).where(jobs.c.state.in_(ACTIVE_STATES))
                                   ).scalar_one()
        live = GaugeMetricFamily("embedfleet_live_workers", "Worker nodes with a recent heartbeat, by queue consumed",
                                 labels=["queue"])
        for queue in (*ALL_QUEUES, *sorted(set(per_queue) - set(ALL_QUEUES))):
            live.add_metric([queue], float(per_queue.get(queue, 0)))
        yield live
        queued = GaugeMetricFamily("embedfleet_chunks_queued", "Chunks of running jobs sent and not yet started")
        queued.add_metric([], float(open_chunks[0]))
        yield queued
        in_flight = GaugeMetricFamily("embedfleet_chunks_in_flight", "Chunks of running jobs being encoded")
        in_flight.add_metric([], float(open_chunks[1]))
        yield in_flight
        jobs_running = GaugeMetricFamily("embedfleet_jobs_running", "Jobs submitting or running")
        jobs_running.add_metric([], float(running))
        yield jobs_running

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("embedfleet_ledger_up", "1 if the last scrape could read the ledger")
        try:
            figures = self._figures()
        except Exception:  # a scrape must answer even when the database is away
            log.exception("could not read the ledger")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._fleet()

        labels = ["job", "collection"]
        gauges: dict[str, tuple[str, Any]] = {
            "records_read": ("Records read from the corpus", lambda s, m: s.records_read),
            "records_stored": ("Records stored as vectors", lambda s, m: s.stored),
            "records_skipped": ("Records skipped (invalid or unchanged)", lambda s, m: s.skipped),
            "records_dead": ("Records dead-lettered", lambda s, m: s.dead),
            "retries": ("Transient failures retried", lambda s, m: s.retries),
            "splits": ("Chunk halvings after out-of-memory", lambda s, m: s.splits),
            "chunks_done": ("Chunks done", lambda s, m: s.chunks_done),
            "chunks_total": ("Chunks in the job", lambda s, m: s.chunks_total),
            "records_per_second": ("Stored and dead records per second of wall time", lambda s, m: s.rate),
            "recent_records_per_second": ("Records per second over the last 30 s (the ETA's rate)",
                                          lambda s, m: s.recent_rate),
            "eta_seconds": ("Seconds left at the recent rate", lambda s, m: s.eta_seconds),
            "encode_p50_seconds": ("Median per-chunk encode time", lambda s, m: m["encode_p50_s"]),
            "encode_p95_seconds": ("95th percentile per-chunk encode time", lambda s, m: m["encode_p95_s"]),
            "error_rate": ("Dead / (stored + dead)", lambda s, m: m["error_rate"]),
            "cache_hit_rate": ("Records skipped as unchanged / records read", lambda s, m: m["cache_hit_rate"]),
            "done": ("1 when the job is done", lambda s, m: 1 if s.state == "done" else 0),
        }
        for name, (doc, value) in gauges.items():
            family = GaugeMetricFamily(self.PREFIX + name, doc, labels=labels)
            for stats, metrics in figures:
                v = value(stats, metrics)
                if v is not None:
                    family.add_metric([stats.job_id, stats.collection], float(v))
            yield family
        util = GaugeMetricFamily(self.PREFIX + "worker_utilisation",
                                 "Encode seconds over the job's wall time, per worker name",
                                 labels=[*labels, "worker"])
        for stats, metrics in figures:
            for worker, fraction in metrics["worker_utilisation"].items():
                util.add_metric([stats.job_id, stats.collection, worker], float(fraction))
        yield util


def collect_registry(engine: Engine, limit: int = 20, dead_after: float = 15.0) -> CollectorRegistry:
    """A registry holding only the ledger's figures (no process metrics of the exporter)."""
    registry = CollectorRegistry()
    registry.register(LedgerCollector(engine, limit, dead_after))
    return registry
