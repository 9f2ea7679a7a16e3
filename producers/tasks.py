"""The producers' Celery tasks, run by workers on the light collect queue: beat's reconciler
and the nightly reindex. Producer work (re-sending, submitting) that needs no model."""

from __future__ import annotations

import logging

from ..config.celery_app import app
from ..config.queues import RECONCILE_TASK, REINDEX_TASK
from ..config.sending import celery_sender, payload_sender
from ..config.settings import get_settings
from ..storage.collections import claim_reindex
from ..storage.engine import get_engine
from ..storage.ledger import abandon_stalled_submissions, stalled_jobs
from ..storage.resend import resend_open_chunks, resend_stranded
from .reindex import registered_request
from .submit import submit

log = logging.getLogger(__name__)


@app.task(name=RECONCILE_TASK, max_retries=0)
def reconcile() -> dict[str, int]:
    """Beat runs this: re-send the open chunks of jobs that show no sign of life for a lease."""
    resent = {}
    engine = get_engine(get_settings().database_url)
    for job_id in abandon_stalled_submissions(engine, get_settings().lease_seconds):
        log.warning("job %s abandoned: its producer stopped before sending every chunk", job_id)
    # Chunks held by dead workers (the workers' own sweeps usually got there first).
    resend_stranded(engine, payload_sender(celery_sender(app)), get_settings().dead_after_seconds)
    for job_id in stalled_jobs(engine, get_settings().lease_seconds):
        resent[job_id] = resend_open_chunks(engine, payload_sender(celery_sender(app)), job_id)
        log.warning("reconciler re-sent %d chunks of stalled job %s", resent[job_id], job_id)
    return resent


@app.task(name=REINDEX_TASK, max_retries=0)
def reindex(collection: str) -> str | None:
    """Beat runs this nightly per collection: re-run its registered source, embedding only
    what changed. The claim makes a second beat, or a restart across the hour, a no-op."""
    settings = get_settings()
    engine = get_engine(get_settings().database_url)
    if not claim_reindex(engine, collection, settings.reindex_min_gap_seconds):
        log.info("reindex of %s already started within %ss: skipped", collection, settings.reindex_min_gap_seconds)
        return None
    submission = submit(engine, registered_request(engine, collection, settings), celery_sender(app))
    log.warning("reindex of %s: job %s, %d chunks", collection, submission.job_id, submission.chunks)
    return submission.job_id
