"""Send again, from the ledger's copy, what the broker lost or a dead worker held. Both
producers (`resume`, `--wait`, the reconciler) and workers (the heartbeat's sweep) use
this, with a sender of ledger payloads; storage itself never decodes a message."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Engine

from ..store.ledger import (
    abandon_stalled_submissions,
    jobs_with_open_chunks,
    mark_resent,
    open_chunk_payloads,
    stalled_jobs,
)
from .liveness import claim_stranded, prune_dead_nodes, unclaim

log = logging.getLogger(__name__)

PayloadSender = Callable[[bytes], None]


def resend_open_chunks(engine: Engine, send_payload: PayloadSender, job_id: str) -> int:
    """Every chunk of the job that is not done, sent again. Chunks that are in fact still
    queued get done twice, which the idempotent upsert makes harmless."""
    payloads = open_chunk_payloads(engine, job_id)
    for _seq, payload in payloads:
        send_payload(payload)
    mark_resent(engine, job_id, [seq for seq, _ in payloads])
    return len(payloads)


def resend_stranded(engine: Engine, send_payload: PayloadSender, dead_after: float, job_id: str | None = None,
                    claimant: str | None = None) -> int:
    """Re-send the open chunks (of one job, or all) held by worker nodes that stopped beating:
    seconds after a worker dies, not after the broker's visibility timeout."""
    claimed = claim_stranded(engine, dead_after, job_id, claimant)
    for done, chunk in enumerate(claimed):
        try:
            send_payload(chunk.payload)
        except Exception:
            # This chunk and the ones not sent yet go back to their dead holders, for the
            # next sweep (the holders' rows stay: pruning waits for a sweep that sent all).
            for unsent in claimed[done:]:
                unclaim(engine, unsent, claimant)
            raise
        log.warning("re-sent job=%s chunk=%d: its worker stopped beating", chunk.job_id, chunk.seq)
    if job_id is None:
        prune_dead_nodes(engine, dead_after)
    return len(claimed)


def reconcile(engine: Engine, send_payload: PayloadSender, lease_seconds: float, dead_after: float,
              claimant: str | None = None) -> dict[str, int]:
    """Everything the ledger shows as lost, sent again: chunks held by dead workers, and the
    open chunks of jobs with no sign of life for a lease (the broker lost their messages, a
    chunk's retries ran out while the database was down, a send failed). Submissions whose
    producer stopped become abandoned. Run by every worker's heartbeat thread and by beat, so
    no job stalls for longer than a lease whether beat runs or not; a chunk sent twice is
    stored once. Returns the chunks re-sent per stalled job."""
    for job_id in abandon_stalled_submissions(engine, lease_seconds):
        log.warning("job %s abandoned: its producer stopped before sending every chunk", job_id)
    resend_stranded(engine, send_payload, dead_after, claimant=claimant)
    resent = {}
    for job_id in stalled_jobs(engine, lease_seconds):
        resent[job_id] = resend_open_chunks(engine, send_payload, job_id)
        # A stalled job with no open chunk left is not a problem (the next poll finishes it).
        log.log(logging.WARNING if resent[job_id] else logging.INFO, "re-sent %d open chunks of job %s: nothing "
                "moved for %.0f s", resent[job_id], job_id, lease_seconds)
    return resent


def resend_running(engine: Engine, send_payload: PayloadSender) -> dict[str, int]:
    """The open chunks of every job that is submitting or running, sent again: what a broker
    that came back empty lost (fleet/broker_epoch.py). Returns the chunks re-sent per job."""
    return {job_id: resend_open_chunks(engine, send_payload, job_id) for job_id in jobs_with_open_chunks(engine)}
