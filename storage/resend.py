"""Send again, from the ledger's copy, what the broker lost or a dead worker held. Both
producers (`resume`, `--wait`, the reconciler) and workers (the heartbeat's sweep) use
this, with a sender of ledger payloads; storage itself never decodes a message."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Engine

from .ledger import mark_resent, open_chunk_payloads
from .liveness import claim_stranded, unclaim

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
    for chunk in claimed:
        try:
            send_payload(chunk.payload)
        except Exception:
            unclaim(engine, chunk, claimant)
            raise
        log.warning("re-sent job=%s chunk=%d: its worker stopped beating", chunk.job_id, chunk.seq)
    return len(claimed)
