"""The one encoder of this process: loaded once, after fork, and kept for the process's life."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from typing import Any

from celery.signals import worker_process_init

from ..config.celery_app import app
from ..config.queues import EMBED_QUEUE
from ..config.settings import get_settings
from . import heartbeat

log = logging.getLogger(__name__)

# One encoder per model name, kept for the process's life: the configured model is loaded
# at start; a migration's model is loaded by its first chunk and then stays resident too.
_encoders: dict[str, Any] = {}
# Set by a pool process that cannot load the worker's model: shared memory made before the
# pool forks, read by `embedfleet worker` when Celery returns, so the worker exits 1.
_load_failed = multiprocessing.RawValue("b", 0)


def model_load_failed() -> bool:
    return bool(_load_failed.value)


def get_encoder(model: str | None = None) -> Any:
    """The resident encoder of `model` (default: the configured one), loaded on first use."""
    settings = get_settings()
    name = model or settings.model
    if name not in _encoders:
        from .encoder import (
            load_encoder,  # torch is imported here, in the child, not before fork
        )

        _encoders[name] = load_encoder(settings.model_copy(update={"model": name}))
    return _encoders[name]


@worker_process_init.connect(weak=False)
def _load_after_fork(**_: Any) -> None:
    # A prefork child loads its model before taking its first chunk, so the first chunk's
    # latency is encoding, not loading, and a broken model fails the worker at start.
    # A collector-only worker (-Q collect) never needs the model.
    consumed = app.amqp.queues.consume_from or app.amqp.queues
    if EMBED_QUEUE not in consumed:
        return
    try:
        get_encoder()
    except Exception as exc:
        if heartbeat.INCARNATION is None:
            raise  # not a pool process of a fleet worker (the embedded run's in-process worker)
        # `embedfleet worker` checked the model's files before starting; if it still cannot
        # load, this worker cannot serve: stop it (cold shutdown, exit status 1) rather than
        # take chunks it cannot encode or have its pool replace this process forever.
        log.critical("cannot load model %r, stopping the worker: %s: %s", get_settings().model,
                     type(exc).__name__, exc)
        _load_failed.value = 1
        os.kill(os.getppid(), signal.SIGQUIT)
        os._exit(1)
