"""The one encoder of this process: loaded once, after fork, and kept for the process's life."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_init

from config.celery_app import app
from config.queues import EMBED_QUEUE
from config.settings import get_settings

log = logging.getLogger(__name__)

_encoder: Any = None


def get_encoder() -> Any:
    """The resident encoder; the first call (at process start, or the first task) loads it."""
    global _encoder
    if _encoder is None:
        from workers.encoder import load_encoder  # torch is imported here, in the child, not before fork

        _encoder = load_encoder(get_settings())
    return _encoder


def reset_encoder() -> None:
    """Drop the resident encoder so the next call loads a new one (tests, settings change)."""
    global _encoder
    _encoder = None


@worker_process_init.connect(weak=False)
def _load_after_fork(**_: Any) -> None:
    # A prefork child loads its model before taking its first chunk, so the first chunk's
    # latency is encoding, not loading, and a broken model fails the worker at start.
    # A collector-only worker (-Q collect) never needs the model.
    consumed = app.amqp.queues.consume_from or app.amqp.queues
    if EMBED_QUEUE in consumed:
        get_encoder()
