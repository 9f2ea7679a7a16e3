"""The worker's Celery tasks: encode a whole chunk, collect its vectors into SQL, note dead
letters. (The producer-side tasks, reconcile and reindex, are in fleet/job_tasks.py.)"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from celery import Task
from celery.exceptions import TimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerUnreachable
from sqlalchemy.exc import OperationalError

from ..chunks.collect import store_chunk
from ..chunks.dead_letters import dead_letter_chunk
from ..chunks.deliveries import (
    COLLECTOR_CRASHED,
    MODEL_UNAVAILABLE,
    WORKER_TIMED_OUT,
    crashed_too_often,
    isolate_crash,
    model_backoff,
    repeat_backoff,
    repeat_wait_retries,
    split_chunk,
)
from ..chunks.isolation import TRANSIENT_ERRORS, encode_isolating, is_transient
from ..chunks.messages import ChunkTexts, ChunkVectors, DeadRecord, short_job_id
from ..chunks.sending import payload_sender
from ..errors import SourceNotStored
from ..safe_errors import error_type, redacted, safe_error
from ..settings import get_settings
from ..store import codec, pgvector
from ..store.engine import get_engine
from ..store.ledger import count_retry, start_collect, start_delivery, unstarted_halves
from . import heartbeat, watchdog  # noqa: F401 (watchdog: its signal handler)
from .celery_app import app
from .in_place import collects_here, store_lock_timeout
from .queues import COLLECT_TASK, DEAD_LETTER_TASK, ENCODE_TASK, INDEX_TASK, QUERY_TASK
from .resident import get_encoder
from .sending import celery_sender

log = logging.getLogger(__name__)


def _engine():  # type: ignore[no-untyped-def]
    return get_engine(get_settings().database_url)


# A database outage (down, restarting, refusing connections) is waited out for this long,
# trying every few seconds; other transient errors keep settings.max_retries.
OUTAGE_SECONDS = 600.0
OUTAGE_RETRY_SECONDS = 5.0
OUTAGE_RETRIES = int(OUTAGE_SECONDS / OUTAGE_RETRY_SECONDS)


def database_away(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (not a refused row)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError

    return isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DBAPIError) and bool(exc.connection_invalidated))


def outage_countdown(retries: int) -> float:
    """1, 2, 4, then every OUTAGE_RETRY_SECONDS, with jitter, never under 1 s (RabbitMQ's
    delayed delivery): the nodes of a fleet do not all knock at once when it returns."""
    return max(1.0, min(OUTAGE_RETRY_SECONDS, 2.0 ** retries) * random.uniform(0.6, 1.0))


class ChunkTask(Task):
    """Counts retries on the job and dead-letters a chunk whose task failed for good,
    so that a failure never loses a record silently."""

    # Transient failures retry with exponential backoff and jitter, a bounded number of times.
    autoretry_for = (*TRANSIENT_ERRORS, OperationalError, BrokerUnreachable)
    retry_backoff = 1
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = get_settings().max_retries
    acks_late = True

    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None, throw: bool = True,
              eta: Any = None, countdown: float | None = None, max_retries: int | None = None, **options: Any) -> Any:
        """Every retry comes here (Celery's autoretry too). A database that is away is waited
        for: the chunk tries again every few seconds (OUTAGE_RETRY_SECONDS) for up to
        OUTAGE_SECONDS, so it is stored seconds after the database returns, instead of
        spending its max_retries in half a minute and waiting a lease for the reconciler."""
        if exc is not None and database_away(exc):
            countdown = outage_countdown(self.request.retries)
            max_retries = max(max_retries or 0, self.max_retries or 0, OUTAGE_RETRIES)
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def signature_from_request(self, request: Any = None, *args: Any, **kwargs: Any) -> Any:
        """A retry re-sends the task from this signature, and Celery does not carry kwargsrepr
        over: without this, Flower would show a retried chunk's texts."""
        signature = super().signature_from_request(request, *args, **kwargs)
        label = getattr(self.request if request is None else request, "kwargsrepr", None)
        if label:
            signature.set(kwargsrepr=label)
        return signature

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id = kwargs["chunk"]["job_id"]
        log.warning("retrying job=%s chunk=%s after %s", job_id, kwargs["chunk"]["seq"], safe_error(exc))
        try:
            count_retry(_engine(), job_id)
        except Exception as error:  # the database may be what is failing; the retry still happens
            log.warning("could not count the retry of job %s: %s", job_id, safe_error(error))

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        chunk = kwargs["chunk"]
        if isinstance(exc, TimeLimitExceeded) and self.name == ENCODE_TASK:
            _isolate_timeout(ChunkTexts.from_wire(chunk), exc)
            return
        giveup = is_transient(exc)
        log.error("giving up on job=%s chunk=%s: %s", chunk["job_id"], chunk["seq"], safe_error(exc))
        try:
            dead = dead_letter_chunk(_engine(), chunk["job_id"], chunk["seq"], error_type(exc),
                                     f"{'gave up after retries: ' if giveup else ''}{safe_error(exc)}", giveup=giveup)
        except Exception as error:
            # The ledger still has the chunk open: `resume` or the reconciler re-sends it.
            log.error("could not dead-letter job=%s chunk=%s: %s", chunk["job_id"], chunk["seq"], safe_error(error))
            return
        if dead:
            notify_dead_letters(chunk["job_id"], chunk["seq"], dead, error_type(exc))


def _isolate_timeout(texts: ChunkTexts, exc: BaseException) -> None:
    """Celery killed the chunk's process at its hard time limit (this runs in the worker's
    main process): a hang is not a passing fault, so halve the chunk at once; the record
    left alone is a WorkerTimedOut dead letter, with any repeats of its text."""
    engine = _engine()
    if len(texts.ids) > 1:
        halves = split_chunk(engine, texts, heartbeat.INCARNATION)
        for half in halves:
            celery_sender(app)(half)
        log.warning("job=%s chunk=%d ran past its time limit (%s): split into %s", texts.job_id, texts.seq,
                    exc, [h.seq for h in halves])
        return
    message = f"encoding it alone ran past the time limit ({exc}): it hangs its worker process"
    dead = dead_letter_chunk(engine, texts.job_id, texts.seq, WORKER_TIMED_OUT, message, giveup=False)
    log.error("dead-lettered job=%s chunk=%d (%d records): %s", texts.job_id, texts.seq, dead, message)
    if dead:
        notify_dead_letters(texts.job_id, texts.seq, dead, WORKER_TIMED_OUT)


def notify_dead_letters(job_id: str, seq: int, count: int, error_types: str) -> None:
    app.send_task(
        DEAD_LETTER_TASK,
        kwargs={"job_id": job_id, "seq": seq, "count": count, "error_types": error_types},
        kwargsrepr=f"chunk {seq} job {short_job_id(job_id)}, {count} dead ({error_types or 'unknown'})",
    )


def _send_vectors(vectors: ChunkVectors) -> None:
    app.send_task(COLLECT_TASK, kwargs={"chunk": vectors.to_wire()}, kwargsrepr=vectors.label())


@app.task(name=ENCODE_TASK, bind=True, base=ChunkTask)
def encode_chunk(self: Task, chunk: dict[str, Any]) -> str:
    """Encodes the chunk and stores its vectors (fleet/in_place.py) or sends them to the
    collect queue; returns what Flower's Result column shows."""
    began = time.monotonic()
    texts = ChunkTexts.from_wire(chunk)
    settings = get_settings()
    deliveries = start_delivery(_engine(), texts.job_id, texts.seq, holder=heartbeat.INCARNATION)
    if deliveries is None:
        # The parent of a crash split comes back if its process died (or the broker failed)
        # between the split's commit and the halves' send: send the halves nobody started.
        unsent = unstarted_halves(_engine(), texts.job_id, texts.seq)
        for payload in unsent:
            payload_sender(celery_sender(app))(payload)
        log.info("skipping job=%s chunk=%d: not open (done, split or cancelled)%s", texts.job_id, texts.seq,
                 f"; re-sent {len(unsent)} unstarted halves" if unsent else "")
        return "skipped: chunk not open"
    try:
        encoder = get_encoder(texts.model)
    except Exception as exc:
        # Not the records' fault, and another worker may have the model: the delivery counts,
        # the cap is checked before the chunk goes back, and it goes back after a pause.
        problem = f"model {texts.model!r} cannot be loaded: {type(exc).__name__}: {exc}"
        if deliveries < settings.max_deliveries:
            log.error("job=%s chunk=%d delivery %d: %s", texts.job_id, texts.seq, deliveries, problem)
            raise self.retry(exc=exc, countdown=model_backoff(deliveries),
                             max_retries=settings.max_retries + settings.max_deliveries) from exc
        lettered = dead_letter_chunk(_engine(), texts.job_id, texts.seq, MODEL_UNAVAILABLE,
                                     f"{problem} (in {deliveries} deliveries)", giveup=False)
        log.error("dead-lettered job=%s chunk=%d (%d records): %s", texts.job_id, texts.seq, lettered, problem)
        if lettered:
            notify_dead_letters(texts.job_id, texts.seq, lettered, MODEL_UNAVAILABLE)
        return f"encoded 0, dead {lettered}"
    base = dict(job_id=texts.job_id, seq=texts.seq, version_key=texts.version_key, model=encoder.model_name,
                dim=encoder.dimension, worker=str(self.request.hostname or ""), aliases=texts.aliases,
                store_text=texts.store_text)
    if crashed_too_often(deliveries, self.request.retries, texts.seq, settings):
        # Its process died in each earlier delivery: halve it (or dead-letter its last record).
        dead, halves = isolate_crash(_engine(), texts, deliveries, heartbeat.INCARNATION)
        for half in halves:
            celery_sender(app)(half)
        log.warning("job=%s chunk=%d lost its process in %d deliveries: %s", texts.job_id, texts.seq,
                    deliveries - 1, f"split into {[h.seq for h in halves]}" if halves else f"{len(dead)} dead")
        if dead:
            _send_vectors(ChunkVectors(**base, ids=[], positions=[], hashes=[], vectors=b"", dead=dead))
        return f"split into {[h.seq for h in halves]}" if halves else f"encoded 0, dead {len(dead)}"

    started = time.perf_counter()
    outcome = encode_isolating(
        lambda batch, size: encoder.encode_batch(batch, batch_size=size),
        texts.texts, encoder.dimension, getattr(encoder, "batch_size", settings.batch_size),
    )
    seconds = time.perf_counter() - started
    ok, matrix = outcome.ordered(encoder.dimension)
    dead = [
        DeadRecord(texts.ids[f.index], texts.positions[f.index], texts.texts[f.index], texts.hashes[f.index],
                   f.error_type, f.message)
        for f in outcome.failures
    ]
    vectors = ChunkVectors(
        **base,
        ids=[texts.ids[i] for i in ok],
        positions=[texts.positions[i] for i in ok],
        hashes=[texts.hashes[i] for i in ok],
        vectors=codec.pack(matrix),
        encode_seconds=seconds,
        dead=dead,
        splits=outcome.splits,
        texts=[texts.texts[i] for i in ok] if texts.store_text else None,
        metadata=None if texts.metadata is None else [texts.metadata[i] for i in ok],
    )
    # The hard limit this delivery runs under (None where the pool has none: the embedded run).
    time_limit = (self.request.timelimit or (None, None))[0]
    crashes = deliveries - 1 - self.request.retries
    stored = None
    elapsed = time.monotonic() - began
    if collects_here(settings.collect_in_place, self.app.amqp.queues.consume_from, crashes, elapsed, time_limit):
        stored = _store_here(vectors, store_lock_timeout(elapsed, time_limit))
    else:
        _send_vectors(vectors)
    # One structured line per chunk: what the operator greps for.
    log.info(
        "encoded job=%s chunk=%d records=%d dead=%d splits=%d seconds=%.3f device=%s delivery=%d collected=%s",
        texts.job_id, texts.seq, len(ok), len(dead), outcome.splits, seconds, encoder.device, deliveries,
        "queue" if stored is None else "here" if stored.startswith("stored") else "skipped",
    )
    # Flower's Result column: a chunk with poison records is not a clean success.
    return f"encoded {len(ok)}, {stored}" if stored else f"encoded {len(ok)}, dead {len(dead)}"


def _store_here(vectors: ChunkVectors, lock_timeout: float | None = None) -> str | None:
    """Store the chunk's vectors in this process, as collect_chunk would; returns what the
    collect task's Result column would say, or None when the vectors went to the collect
    queue instead. Any failure sends them there, where the collect task's retries, its
    waits for a repeat's first record and its crash cap apply; a failure here counts as one
    of that chunk's collects, so its cap is reached one crash early at worst."""
    engine = _engine()
    try:
        if start_collect(engine, vectors.job_id, vectors.seq) is None:
            return "not stored: chunk not open"
        stored = store_chunk(engine, vectors, last_attempt=False, on_job_done=send_index_build,
                             lock_timeout=lock_timeout)
    # The store's transaction rolled back (or it committed and the job's finish check after it
    # failed: the collect task then finds the chunk done, and the next status poll finishes the job).
    except Exception as exc:
        level = logging.INFO if isinstance(exc, SourceNotStored) else logging.WARNING
        log.log(level, "job=%s chunk=%d: not stored here (%s); its vectors go to the collect queue",
                vectors.job_id, vectors.seq, safe_error(exc))
        _send_vectors(vectors)
        return None
    return _stored_result(vectors, stored)


@app.task(name=COLLECT_TASK, bind=True, base=ChunkTask)
def collect_chunk(self: Task, chunk: dict[str, Any]) -> str:
    """Stores the chunk's vectors; returns what Flower's Result column shows ("stored N, dead M")."""
    vectors = ChunkVectors.from_wire(chunk)
    settings = get_settings()
    collects = start_collect(_engine(), vectors.job_id, vectors.seq)
    if collects is None:
        log.info("skipping the vectors of job=%s chunk=%d: not open (done, split or cancelled)",
                 vectors.job_id, vectors.seq)
        return "not stored: chunk not open"
    if collects - 1 - self.request.retries >= settings.max_deliveries:
        # Its collect killed the process each time (OOM in the upsert, a driver crash) and
        # Celery re-queued it: a cap, not a loop. Its records become dead letters to redrive.
        message = (f"collecting its vectors killed the worker process in {collects - 1} deliveries "
                   "(out of memory in the upsert, or a database driver crash)")
        dead = dead_letter_chunk(_engine(), vectors.job_id, vectors.seq, COLLECTOR_CRASHED, message, giveup=False)
        log.error("dead-lettered job=%s chunk=%d (%d records): %s", vectors.job_id, vectors.seq, dead, message)
        if dead:
            notify_dead_letters(vectors.job_id, vectors.seq, dead, COLLECTOR_CRASHED)
        return f"stored 0, dead {dead}"
    # Repeated texts wait (by retrying) for their first record, which a worker's death or a
    # lost message can delay by minutes: they wait up to two leases, not the ~30 s of the
    # transient errors' retries. On the last try they are dead-lettered instead, so the rest
    # of the chunk is stored either way.
    repeat_retries = repeat_wait_retries(settings)
    try:
        stored = store_chunk(_engine(), vectors, last_attempt=self.request.retries >= repeat_retries,
                             on_job_done=send_index_build)
    except SourceNotStored as exc:
        raise self.retry(exc=exc, countdown=repeat_backoff(self.request.retries), max_retries=repeat_retries) from exc
    except Exception as exc:  # what Flower and the worker's log show: no record text, no SQL parameters
        raise redacted(exc, keep=self.autoretry_for) from None
    return _stored_result(vectors, stored)


def _stored_result(vectors: ChunkVectors, stored: int | None) -> str:
    """After store_chunk: the dead-letter notice, and what Flower's Result column shows."""
    if stored is None:
        log.info("job=%s chunk=%d not stored: its job was cancelled", vectors.job_id, vectors.seq)
        return "not stored: job cancelled"
    # Every record of the chunk ends stored or dead-lettered (by the worker or, for repeats,
    # the collector), so the rest of the chunk is what the notice counts.
    dead = len(vectors.ids) + len(vectors.aliases) + len(vectors.dead) - stored
    if dead:
        notify_dead_letters(vectors.job_id, vectors.seq, dead, ",".join(sorted({d.error_type for d in vectors.dead})))
    return f"stored {stored}, dead {dead}"


def send_index_build(version_key: str) -> None:
    """Ask a collector to build the finished version's HNSW index. Not in the embedded run (its
    in-memory broker): the run builds it itself before it reports done (embedded.py)."""
    if str(app.conf.broker_url).startswith("memory://"):
        return
    app.send_task(INDEX_TASK, kwargs={"version_key": version_key}, kwargsrepr=f"index {version_key}")


@app.task(name=INDEX_TASK, bind=True, autoretry_for=(OperationalError,), max_retries=5, retry_backoff=True)
def build_index(self: Task, version_key: str) -> float | None:
    """The version's HNSW index (store/pgvector.py): seconds it took, None if nothing to do."""
    return pgvector.build_index(_engine(), version_key)


# A query answer is wanted now or never: no retry, no late ack (a lost query is asked
# again by its caller), and it expires from the queue if no worker takes it in time.
@app.task(name=QUERY_TASK, ignore_result=False, acks_late=False, max_retries=0)
def encode_query(*, texts: list[str], model: str) -> dict[str, Any]:
    """The queries' vectors from this worker's resident model: float32 bytes and their dim."""
    encoder = get_encoder(model)
    return {"dim": encoder.dimension, "vectors": codec.pack(encoder.encode_batch(texts))}


class DeadLetters(Exception):
    """What the dead_letter notice ends with, so Flower shows the chunk's dead letters as a
    FAILURE row (red, with this message in its Exception column) on the dead_letter queue."""


# Why a failing notice rather than a custom state or a failing chunk task: Flower's State
# column follows task events, and a task's last event is task-succeeded or task-failed (a
# custom state set with update_state never reaches Flower without a result backend). The
# encode and collect tasks must succeed: the chunk is done in the ledger, its records are
# dead letters, and a failure there would retry or dead-letter the whole chunk. So those
# two say "dead M" in the Result column, and the notice, which changes nothing in the
# ledger and is never retried (max_retries=0, no autoretry), fails. `throws` makes it an
# expected error: the worker logs one line, no traceback.
@app.task(name=DEAD_LETTER_TASK, max_retries=0, throws=(DeadLetters,))
def dead_letter(*, job_id: str, seq: int, count: int, error_types: str) -> None:
    """A notice Flower shows on the dead_letter queue; `embedfleet dlq` reads the records."""
    log.warning("dead letters job=%s chunk=%d count=%d errors=%s", job_id, seq, count, error_types)
    raise DeadLetters(f"{count} records of chunk {seq} are dead letters ({error_types or 'unknown'}): "
                      f"embedfleet dlq list --job {job_id}")
