"""The embedded default: the same Celery tasks on an in-process worker, no server at all.

The broker is kombu's in-memory transport and the worker is a real Celery WorkController
(solo pool) in a thread of this process, so `run` exercises the fleet's code path.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import celery.contrib.testing.tasks  # noqa: F401  registers celery.ping, used to wake the worker
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from celery.worker import state as worker_state
from sqlalchemy import Engine

from .corpus.validation import check_fields
from .encode.availability import declared_max_tokens
from .encode.pool import pool_size
from .errors import check_collection_name
from .fleet.celery_app import app
from .fleet.queues import COLLECT_QUEUE, EMBED_QUEUE
from .fleet.resident import get_encoder, use_encoder_processes
from .fleet.sending import celery_sender, use_broker
from .jobs.follow import JobProgress
from .jobs.stats import JobStats
from .jobs.submit import JobRequest, Submission, submit
from .settings import get_settings
from .store.engine import get_engine
from .store.ledger import abandon_orphaned, embedded_runner, open_chunk_count
from .store.pgvector import check_vector_type

log = logging.getLogger(__name__)


class BatchCounter:
    """Texts the in-process encoder has encoded, counted after each forward pass (added
    under a lock, so an encoder calling back from several threads counts right; the display
    reads an int)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, texts: int) -> None:
        with self._lock:
            self.count += texts

    def read(self) -> int:
        return self.count


class _Model:
    """The run's model, loaded when the first chunk is about to be sent: a rerun of an
    unchanged corpus (nothing to encode) never imports torch. Once loaded, the encoder
    counts its batches for the progress display (an encoder without on_batch, such as an
    EMBEDFLEET_ENCODER backend, moves the display per chunk)."""

    def __init__(self, name: str, announce: bool = True) -> None:
        self.name = name
        # Say "loading model ..." on stderr (the API's progress=False: not).
        self.announce = announce
        self.encoder: Any = None
        self.batches = BatchCounter()
        self._loading: threading.Thread | None = None
        self._failure: BaseException | None = None

    def start_loading(self) -> None:
        """Load in a thread of its own while the corpus is validated and chunked (a corpus the
        collection has never seen surely needs the model). Not a daemon: an interpreter must
        not exit while the thread is half-way through importing torch."""

        def load() -> None:
            try:
                get_encoder(self.name, announce=self.announce)
            except BaseException as exc:  # handed to load(), which raises it where it is needed
                self._failure = exc

        self._loading = threading.Thread(target=load, name="embedded-model-load")
        self._loading.start()

    def load(self) -> Any:
        if self.encoder is None:
            if self._loading is not None:
                self._loading.join()
                if self._failure is not None:
                    raise self._failure
            # Saying so: torch and the weights take seconds that would otherwise be a blank screen.
            self.encoder = get_encoder(self.name, announce=self.announce)
            if hasattr(self.encoder, "on_batch"):
                self.encoder.on_batch = self.batches
        return self.encoder

    def encoded(self) -> int:
        """Texts encoded so far; 0 for an encoder that does not count (the display then
        moves per finished chunk, from the ledger)."""
        return self.batches.read()

    def detach(self) -> None:
        if hasattr(self.encoder, "on_batch"):
            self.encoder.on_batch = None


class _TaskEnds:
    """Counts the tasks the in-process worker finished (Celery's task_postrun, sent in the
    worker's thread), so the pacer waits for one instead of polling the ledger: a count of a
    job's chunks every 10 ms took 8-9% of the process's CPU (py-spy), from the encoder."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.count = 0

    def __enter__(self) -> _TaskEnds:
        task_postrun.connect(self._ended, weak=False)
        return self

    def __exit__(self, *_: object) -> None:
        task_postrun.disconnect(self._ended)

    def _ended(self, **_: Any) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Until a task ended after `seen` was read, or timeout."""
        with self._changed:
            self._changed.wait_for(lambda: self.count != seen, timeout)


class _Pacer:
    """Keeps at most `window` chunks ahead of the in-process worker (memory stays flat)
    and drives the progress display while the producer waits."""

    # The longest the pacer waits without looking at the ledger: the progress display's pace,
    # and a bound in case a chunk ends without a task ending here (it cannot, in-process).
    LOOK_EVERY = 0.25

    def __init__(self, engine: Engine, window: int, model: _Model, ends: _TaskEnds, show: bool = True) -> None:
        self.engine = engine
        self.show = show
        self.window = window
        self.model = model
        self.ends = ends
        self.progress: JobProgress | None = None

    def _progress(self, job_id: str) -> JobProgress:
        if self.progress is None:
            self.progress = JobProgress(self.engine, job_id, encoded=self.model.encoded, show=self.show).__enter__()
        return self.progress

    def __call__(self, job_id: str) -> None:
        self.model.load()  # before the first chunk is written: the model is needed from now on
        progress = self._progress(job_id)
        while True:
            seen = self.ends.count  # read before the ledger: a task ending meanwhile is not missed
            if open_chunk_count(self.engine, job_id) < self.window:
                return
            progress.poll()
            self.ends.wait(seen, self.LOOK_EVERY)

    def follow(self, job_id: str, timeout: float | None) -> JobStats:
        try:
            return self._progress(job_id).wait_done(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None


def use_memory_broker() -> None:
    use_broker(app, "memory://localhost/")  # drops a pool a fleet submit in this process made
    app.conf.update(
        # The virtual transport sleeps this long whenever a queue is empty; the default 1s
        # would idle the worker between chunks.
        # body_encoding None: the memory transport hands the message dict over in-process,
        # so the virtual transport's base64 of every body (the vectors of each collect
        # message included) is work for nothing: 6% of a no-op run's time (py-spy).
        broker_transport_options={"polling_interval": 0.005, "body_encoding": None},
        # Nobody watches events in-process.
        worker_send_task_events=False,
        task_send_sent_event=False,
    )


@contextmanager
def in_process_worker() -> Iterator[None]:
    """A real Celery worker (solo pool) in a thread of this process, on the memory broker.

    One task at a time. A pool of two threads was measured: 17-24% faster on one-liners while
    two OpenVINO encodes ran at once, which hung both once (CompiledSentenceModel.lock);
    with the encodes taking turns, overlapping a collect with an encode gave nothing."""
    use_memory_broker()
    stop = threading.Event()

    def nudge() -> None:
        # The worker's loop checks for shutdown only between messages (every 2 s when
        # idle); pinging it while it winds down lets it stop in milliseconds.
        while not stop.wait(0.05):
            app.send_task("celery.ping", queue=EMBED_QUEUE)

    try:
        with start_worker(
            app,
            pool="solo",
            perform_ping_check=False,
            queues=[EMBED_QUEUE, COLLECT_QUEUE],
            loglevel="WARNING",
            shutdown_timeout=120,
        ):
            try:
                yield
            finally:
                worker_state.should_terminate = 0
                threading.Thread(target=nudge, daemon=True, name="embedded-worker-nudge").start()
    finally:
        stop.set()


def _first_job_of(engine: Engine, request: JobRequest) -> bool:
    """The collection (or the version a migration fills) holds no vector yet: every valid
    record will be encoded, so the model can load while the corpus is read."""
    from .errors import LedgerError
    from .store.collections import get_collection, version_rows

    try:
        key = request.version_key or get_collection(engine, request.collection).current_key
    except LedgerError:
        return True  # no such collection yet
    return version_rows(engine, key) == 0


def run_embedded(request: JobRequest, job_timeout: float | None = None,
                 progress: bool = True) -> tuple[Submission, JobStats]:
    """Run the job on an in-process worker to its end. `progress`: the model's loading line,
    the progress display and the index line on stderr (False: silent; warnings still log)."""
    settings = get_settings()
    # What surely cannot work is refused before the model loads (seconds) or anything is
    # written: a bad collection name, a field no record has. submit() checks them again.
    check_collection_name(request.collection)
    check_fields(request.corpus, request.spec)
    engine = get_engine(settings.database_url)
    # A run of this collection that died (kill -9, the OOM killer) left its job open: its
    # chunks were in that process's memory. This run takes over; stored records are skipped.
    for job_id in abandon_orphaned(engine, request.collection):
        log.warning("job %s of %s was left open by an embedded run that is gone: abandoned, this run takes over",
                    job_id, request.collection)
    if request.vector_type != "auto":
        with engine.connect() as conn:
            check_vector_type(conn, request.vector_type)
    # The in-process worker runs one task at a time; encoder processes use the other cores.
    use_encoder_processes(pool_size(settings))
    model = _Model(request.model, announce=progress)
    # The truncation window is the model's input length, read from its files when they say;
    # a model that does not (or a custom encoder) is loaded now to ask it.
    window = None if settings.encoder else declared_max_tokens(request.model)
    first_job = window is not None and _first_job_of(engine, request)
    if window is None:
        window = model.load().max_tokens
    elif first_job:
        model.start_loading()  # while the corpus is validated; the job starts once it is loaded
    request = dataclasses.replace(request, window=window, runner=embedded_runner())
    try:
        with in_process_worker(), _TaskEnds() as ends:
            pacer = _Pacer(engine, settings.embedded_window, model, ends, show=progress)
            try:
                submission = submit(engine, request, celery_sender(app), wait_for_room=pacer,
                                    before_job=model.load if first_job else None)
            except BaseException:
                pacer.close()
                raise
            stats = pacer.follow(submission.job_id, job_timeout)
        if stats.state == "done":
            _build_index(engine, stats.version_key, progress)
    finally:
        model.detach()
        use_encoder_processes(0)
    return submission, stats


def _build_index(engine: Engine, version_key: str, say: bool) -> None:
    """A pgvector version's HNSW index, before `run` reports done: on the fleet a collector
    builds it when asked through the collect queue (fleet/tasks.py: send_index_build, which
    the embedded run skips: its worker stops with the job). Nothing to do for bytea, or once
    it is built."""
    from .store.pgvector import build_index

    seconds = build_index(engine, version_key)
    if seconds is not None and say:
        sys.stderr.write(f"built the HNSW index of {version_key} in {seconds:.1f} s\n")
        sys.stderr.flush()
