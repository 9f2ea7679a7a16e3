"""The jobs' read model: a job's state, counts, rate and ETA, as status, progress and the
API show them. One query over the job's chunks, one over its dead letters."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, exists, func, select

from ..chunks.liveness import live_consumers
from ..chunks.splits import SPLIT_STATE
from ..errors import LedgerError
from ..store.ledger import OPEN_CHUNK_STATES
from ..store.schema import chunks, dead_letters, jobs, vectors

# The queue encode workers consume (fleet/queues.py's EMBED_QUEUE; jobs do not import the fleet).
EMBED_QUEUE_NAME = "embed"
# What a job with open chunks and no live worker on `embed` waits for, in words.
NO_WORKER = "no live worker consumes the embed queue: start `embedfleet worker`"


@dataclass(frozen=True)
class JobStats:
    job_id: str
    collection: str
    version_key: str
    model: str
    state: str
    records_read: int
    stored: int
    skipped: int
    dead: int
    truncated: int
    chunks_done: int
    chunks_total: int
    created_at: float
    finished_at: float | None
    # Seconds spent inside the encoder, summed over chunks.
    encode_seconds: float
    retries: int = 0
    giveups: int = 0
    splits: int = 0
    resends: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    deduplicated: int = 0
    # Submitting or running, but no chunk sent, started or done for the lease (stalled_jobs'
    # notion): it will not finish on its own, so it has no ETA. Set only when job_stats is
    # given a lease.
    stalled: bool = False
    # A fleet job with open chunks and no live worker that consumes the embed queue (the
    # heartbeat table knows): nothing will move until one starts.
    no_worker: bool = False
    # None for the fleet; "embedded HOST PID START" for an embedded run's job.
    runner: str | None = None
    # Records per second over the last RECENT_SECONDS, from the ledger's chunk times: the same
    # for every follower of the job (None: nothing finished in that time).
    recent_rate: float | None = None
    # Chunks a worker has started and not finished.
    chunks_in_flight: int = 0
    # Live workers on `embed` (when asked with dead_after; None otherwise).
    live_workers: int | None = None

    @property
    def records_done(self) -> int:
        return self.stored + self.skipped + self.dead

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.time()) - self.created_at

    @property
    def rate(self) -> float:
        """Records per second, stored or dead, over the job's wall time so far."""
        return (self.stored + self.dead) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """At the recent rate (the ledger's, so `status` and every follower say the same), or
        the job's average before anything finished recently."""
        if self.state == "done":
            return 0.0
        remaining = self.records_read - self.records_done
        # records_read is known from validation before the first chunk is sent, so an ETA
        # holds while the producer is still submitting too (the embedded run feeds as it goes).
        rate = self.recent_rate or self.rate
        if rate <= 0 or self.state not in ("submitting", "running") or self.stalled:
            return None
        return max(remaining, 0) / rate

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "collection": self.collection,
            "version": self.version_key,
            "model": self.model,
            "state": self.state,
            "records_read": self.records_read,
            "stored": self.stored,
            "skipped": self.skipped,
            "skipped_invalid": self.skipped - self.unchanged,
            "skipped_unchanged": self.unchanged,
            "dead": self.dead,
            "truncated": self.truncated,
            "chunks_done": self.chunks_done,
            "chunks_total": self.chunks_total,
            "seconds": round(self.elapsed, 3),
            "records_per_second": round(self.rate, 1),
            "recent_records_per_second": None if self.recent_rate is None else round(self.recent_rate, 1),
            "chunks_in_flight": self.chunks_in_flight,
            "live_workers": self.live_workers,
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "encode_seconds": round(self.encode_seconds, 3),
            "retries": self.retries,
            "giveups": self.giveups,
            "splits": self.splits,
            "resends": self.resends,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "deduplicated": self.deduplicated,
            "stalled": self.stalled,
            "no_worker": self.no_worker,
            "cache_hit_rate": round(self.unchanged / self.records_read, 4) if self.records_read else 0.0,
        }


class AmbiguousJob(LedgerError):
    """A job id prefix that more than one job starts with."""

    def __init__(self, prefix: str, candidates: list[str], more: bool) -> None:
        self.prefix = prefix
        self.candidates = candidates
        listed = ", ".join(candidates) + (", ..." if more else "")
        super().__init__(f"job id {prefix!r} is ambiguous: it starts {listed}; give more characters")


# How many candidates an ambiguous prefix lists: enough to pick from, never the whole ledger.
CANDIDATES_SHOWN = 10


def resolve_job_id(engine: Engine, prefix: str) -> str:
    """The full id of the one job whose id starts with `prefix` (progress lines print 8
    characters; a full id matches itself). Unknown or ambiguous prefixes are LedgerErrors,
    the ambiguous one listing the candidates."""
    wanted = prefix.strip().lower()
    if not wanted:
        raise LedgerError("give a job id (or the start of one)")
    with engine.connect() as conn:
        # autoescape: a '%' or '_' typed by the user is a character, not a LIKE wildcard.
        rows = conn.execute(select(jobs.c.id).where(jobs.c.id.startswith(wanted, autoescape=True))
                            .order_by(jobs.c.id).limit(CANDIDATES_SHOWN + 1)).scalars().all()
    if not rows:
        raise LedgerError(f"no job {prefix!r}")
    if wanted in rows:  # a full id that is also the start of a longer one (never, with uuid4 hex)
        return wanted
    if len(rows) > 1:
        raise AmbiguousJob(prefix, list(rows[:CANDIDATES_SHOWN]), more=len(rows) > CANDIDATES_SHOWN)
    return str(rows[0])


def job_stats(engine: Engine, job_id: str, lease_seconds: float | None = None,
              dead_after: float | None = None) -> JobStats:
    """The job's figures now. With `lease_seconds`, whether it is stalled; with `dead_after`
    (a heartbeat's), whether a fleet job with open chunks has no live worker on `embed`."""
    now = time.time()
    since = now - RECENT_SECONDS
    with engine.connect() as conn:
        job = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if job is None:
            raise LedgerError(f"no job {job_id!r}")
        agg = conn.execute(
            select(
                func.coalesce(func.sum(chunks.c.stored), 0),
                func.count().filter(chunks.c.state.notin_(OPEN_CHUNK_STATES)),
                func.count(),
                func.coalesce(func.sum(chunks.c.encode_seconds), 0.0),
                func.coalesce(func.sum(chunks.c.splits), 0),
                func.max(chunks.c.sent_at), func.max(chunks.c.started_at), func.max(chunks.c.done_at),
                # New records of the chunks whose records were stored (a split chunk's own row
                # keeps the count for its halves), and whether the ledger counts them at all.
                func.coalesce(func.sum(chunks.c.added).filter(chunks.c.state.in_(("done", SPLIT_STATE))), 0),
                func.count(chunks.c.added),
                # The recent rate's records (finished in the last RECENT_SECONDS), the first
                # start, and the chunks in flight: in the same scan, not a query of their own.
                func.coalesce(func.sum(chunks.c.stored + chunks.c.dead).filter(chunks.c.done_at >= since), 0),
                func.min(chunks.c.started_at),
                func.count().filter(and_(chunks.c.state.in_(OPEN_CHUNK_STATES), chunks.c.started_at.is_not(None))),
            ).where(chunks.c.job_id == job_id)
        ).one()
        dead = conn.execute(
            select(func.count()).select_from(dead_letters).where(dead_letters.c.job_id == job_id)
        ).scalar_one()
        added, updated = job.added, job.updated
        if agg[9]:
            # What was stored, not what change detection planned: a dead letter of a new record
            # has no row in the version (an updated one keeps its old vector), and a cancelled
            # chunk's records were never stored.
            dead_new = conn.execute(
                select(func.count()).select_from(dead_letters).where(and_(
                    dead_letters.c.job_id == job_id,
                    ~exists().where(and_(vectors.c.version_key == job.version_key,
                                         vectors.c.record_id == dead_letters.c.record_id))))
            ).scalar_one() if dead else 0
            added = max(0, int(agg[8]) - int(dead_new))
            updated = max(0, int(agg[0]) - added)
        open_chunks = int(agg[2]) - int(agg[1])
        live = job.state in ("submitting", "running")
        live_workers = live_consumers(conn, EMBED_QUEUE_NAME, dead_after) if dead_after is not None else None
        no_worker = bool(live and job.runner is None and open_chunks > 0 and live_workers == 0)
        recent_rate, in_flight = _recent(int(agg[10]), agg[11], int(agg[12]), job.created_at, now) if live \
            else (None, 0)
    return JobStats(
        job_id=job.id,
        collection=job.collection,
        version_key=job.version_key,
        model=job.model,
        state=job.state,
        records_read=job.records_read,
        stored=int(agg[0]),
        # Skipped: invalid input, or unchanged since the version last stored it (cache hits).
        skipped=job.skipped_invalid + job.unchanged,
        dead=int(dead),
        truncated=job.truncated,
        chunks_done=int(agg[1]),
        chunks_total=max(job.chunks_total, int(agg[2])),
        created_at=job.created_at,
        finished_at=job.finished_at,
        encode_seconds=float(agg[3]),
        retries=job.retries,
        giveups=job.giveups,
        splits=int(agg[4]),
        resends=job.resends,
        added=added,
        updated=updated,
        unchanged=job.unchanged,
        deleted=job.deleted,
        deduplicated=job.deduplicated,
        stalled=lease_seconds is not None and job.state in ("submitting", "running")
        and max(job.created_at, job.producer_seen_at or 0.0, *(t or 0.0 for t in agg[5:8]))
        < time.time() - lease_seconds,
        no_worker=no_worker,
        runner=job.runner,
        recent_rate=recent_rate,
        chunks_in_flight=in_flight,
        live_workers=live_workers if job.runner is None else None,
    )


# The recent rate's window: long enough that a fleet's chunks, which land a few at a time,
# give a steady rate (a 10 s window swung the ETA by 10x between polls), short enough to
# follow a change of speed within a minute.
RECENT_SECONDS = 30.0


def _recent(records: int, first_started: float | None, in_flight: int, created_at: float,
            now: float) -> tuple[float | None, int]:
    """(records per second over the last RECENT_SECONDS, or since the first chunk started
    when that is later; chunks started and not finished)."""
    start = max(now - RECENT_SECONDS, first_started if first_started is not None else created_at)
    rate = records / (now - start) if records and now > start else None
    return rate, in_flight
