"""The producers' Celery tasks, run by workers on the light collect queue: beat's reconciler
and the nightly reindex. Producer work (re-sending, submitting) that needs no model."""

from __future__ import annotations

import logging

from ..chunks.resend import reconcile as reconcile_ledger
from ..chunks.sending import payload_sender
from ..jobs.reindex import registered_request
from ..jobs.submit import submit
from ..settings import get_settings
from ..store.collections import claim_reindex
from ..store.engine import get_engine
from .celery_app import app
from .queues import RECONCILE_TASK, REINDEX_TASK
from .sending import celery_sender

log = logging.getLogger(__name__)


@app.task(name=RECONCILE_TASK, max_retries=0)
def reconcile() -> dict[str, int]:
    """Beat runs this (every worker's heartbeat runs the same): re-send what the ledger shows
    as lost (chunks/resend.py: reconcile)."""
    settings = get_settings()
    return reconcile_ledger(get_engine(settings.database_url), payload_sender(celery_sender(app)),
                            settings.lease_seconds, settings.dead_after_seconds)


@app.task(name=REINDEX_TASK, max_retries=0)
def reindex(*, collection: str) -> str | None:
    """Beat runs this nightly per collection: re-run its registered source, embedding only
    what changed. The claim makes a second beat, or a restart across the hour, a no-op.
    Keyword-only: Flower's kwargs column shows `{'collection': 'docs'}`, where a positional
    argument would leave it `{}`."""
    settings = get_settings()
    engine = get_engine(get_settings().database_url)
    if not claim_reindex(engine, collection, settings.reindex_min_gap_seconds):
        log.info("reindex of %s already started within %ss: skipped", collection, settings.reindex_min_gap_seconds)
        return None
    submission = submit(engine, registered_request(engine, collection, settings), celery_sender(app))
    log.info("reindex of %s: job %s, %d chunks", collection, submission.job_id, submission.chunks)
    return submission.job_id
