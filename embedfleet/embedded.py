"""The embedded default: the same Celery tasks on an in-process worker, no server at all.

The broker is kombu's in-memory transport and the worker is a real Celery WorkController
(solo pool) in a thread of this process, so `run` exercises the fleet's code path.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import celery.contrib.testing.tasks  # noqa: F401  registers celery.ping, used to wake the worker
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state
from sqlalchemy import Engine

from .config.celery_app import app
from .config.queues import COLLECT_QUEUE, EMBED_QUEUE
from .config.sending import celery_sender
from .config.settings import get_settings
from .producers.progress import JobProgress
from .producers.sending import use_broker
from .producers.submit import JobRequest, Submission, submit
from .storage.engine import get_engine
from .storage.jobs import JobStats
from .storage.ledger import chunk_counts
from .workers.resident import get_encoder

log = logging.getLogger(__name__)


class BatchCounter:
    """Texts the in-process encoder has encoded, counted after each forward pass (the worker
    thread adds, the display reads an int: no lock needed under the GIL)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, texts: int) -> None:
        self.count += texts

    def read(self) -> int:
        return self.count


@contextmanager
def counting_batches(encoder: Any) -> Iterator[BatchCounter | None]:
    """Count the encoder's batches while the run lasts; None for an encoder that cannot say
    (EMBEDFLEET_ENCODER backends without on_batch): its progress moves per chunk."""
    if not hasattr(encoder, "on_batch"):
        yield None
        return
    counter = BatchCounter()
    encoder.on_batch = counter
    try:
        yield counter
    finally:
        encoder.on_batch = None


class _Pacer:
    """Keeps at most `window` chunks ahead of the in-process worker (memory stays flat)
    and drives the progress display while the producer waits."""

    def __init__(self, engine: Engine, window: int, batches: BatchCounter | None = None) -> None:
        self.engine = engine
        self.window = window
        self.batches = batches
        self.progress: JobProgress | None = None

    def _progress(self, job_id: str) -> JobProgress:
        if self.progress is None:
            encoded = self.batches.read if self.batches is not None else None
            self.progress = JobProgress(self.engine, job_id, encoded=encoded).__enter__()
        return self.progress

    def __call__(self, job_id: str) -> None:
        progress = self._progress(job_id)
        while True:
            done, written = chunk_counts(self.engine, job_id)
            if written - done < self.window:
                return
            progress.poll()
            time.sleep(0.01)

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
        broker_transport_options={"polling_interval": 0.005},
        # Nobody watches events in-process.
        worker_send_task_events=False,
        task_send_sent_event=False,
    )


@contextmanager
def in_process_worker() -> Iterator[None]:
    """A real Celery worker (solo pool) in a thread of this process, on the memory broker."""
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


def run_embedded(request: JobRequest, job_timeout: float | None = None) -> tuple[Submission, JobStats]:
    settings = get_settings()
    engine = get_engine(settings.database_url)
    # Load before the clock starts (the worker thread reuses it), saying so: torch and the
    # weights take seconds that would otherwise be a blank screen.
    encoder = get_encoder(request.model, announce=True)
    request = dataclasses.replace(request, window=encoder.max_tokens)
    with counting_batches(encoder) as batches, in_process_worker():
        pacer = _Pacer(engine, settings.embedded_window, batches)
        try:
            submission = submit(engine, request, celery_sender(app), wait_for_room=pacer)
        except BaseException:
            pacer.close()
            raise
        stats = pacer.follow(submission.job_id, job_timeout)
    return submission, stats
