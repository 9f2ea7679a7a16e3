"""The one encoder of this process: loaded once, after fork, and kept for the process's life."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any

from celery.signals import worker_process_init

from ..settings import get_settings
from . import heartbeat
from .celery_app import app
from .queues import EMBED_QUEUE, QUERY_QUEUE

log = logging.getLogger(__name__)

# One encoder per model name, kept for the process's life: the configured model is loaded
# at start; a migration's model is loaded by its first chunk and then stays resident too.
_encoders: dict[str, Any] = {}
# One load per model even when two threads ask at once (the embedded run's loading thread
# and its worker thread, or any threaded caller): the second waits for the first's encoder.
_loading = threading.Lock()
# Set by a pool process that cannot load the worker's model: shared memory made before the
# pool forks, read by `embedfleet worker` when Celery returns, so the worker exits 1.
_load_failed = multiprocessing.RawValue("b", 0)


# Encoder processes per model (encode/pool.py) instead of an encoder in this
# process: set by the embedded run, which has no prefork pool of its own. 0: in-process.
_encoder_processes = 0


def use_encoder_processes(count: int) -> None:
    """Models loaded from now on are served by `count` child processes (0: in this one)."""
    global _encoder_processes
    _encoder_processes = count


def model_load_failed() -> bool:
    return bool(_load_failed.value)


def get_encoder(model: str | None = None, announce: bool = False) -> Any:
    """The resident encoder of `model` (default: the configured one), loaded on first use.

    announce: a command a person waits on (run, search) says on stderr that the model is
    loading and how long it took, instead of a blank screen for the seconds torch and the
    weights take. Workers log the load instead (encoder.py)."""
    settings = get_settings()
    name = model or settings.model
    if name in _encoders:
        return _encoders[name]
    with _loading:
        return _encoders[name] if name in _encoders else _load(settings, name, announce)


def _load(settings: Any, name: str, announce: bool) -> Any:
    from ..encode.encoder import load_encoder  # torch is imported here, in the child, not before fork

    if announce:
        what = f"encoder {settings.encoder} ({name})" if settings.encoder else f"model {name}"
        sys.stderr.write(f"loading {what}...\n")
        sys.stderr.flush()
    started = time.perf_counter()
    wanted = settings.model_copy(update={"model": name})
    if _encoder_processes:
        from ..encode.pool import EncoderPool, threads_per_process

        _encoders[name] = EncoderPool(wanted, _encoder_processes,
                                      threads_per_process(settings, _encoder_processes))
    else:
        _encoders[name] = load_encoder(wanted)
    if announce:
        sys.stderr.write(f"model loaded in {time.perf_counter() - started:.1f} s\n")
        sys.stderr.flush()
    return _encoders[name]


@worker_process_init.connect(weak=False)
def _load_after_fork(**_: Any) -> None:
    # A prefork child loads its model before taking its first chunk, so the first chunk's
    # latency is encoding, not loading, and a broken model fails the worker at start.
    # A collector-only worker (-Q collect) never needs the model; a query worker does.
    # The embedded run's in-process worker (no incarnation: not a fleet node) loads nothing
    # here: the run loads the model when a chunk needs it, so a rerun with nothing to encode
    # never imports torch.
    consumed = app.amqp.queues.consume_from or app.amqp.queues
    if heartbeat.INCARNATION is None or (EMBED_QUEUE not in consumed and QUERY_QUEUE not in consumed):
        return
    try:
        get_encoder()
    except Exception as exc:
        # `embedfleet worker` checked the model's files before starting; if it still cannot
        # load, this worker cannot serve: stop it (cold shutdown, exit status 1) rather than
        # take chunks it cannot encode or have its pool replace this process forever.
        log.critical("cannot load model %r, stopping the worker: %s: %s", get_settings().model,
                     type(exc).__name__, exc)
        _load_failed.value = 1
        os.kill(os.getppid(), signal.SIGQUIT)
        os._exit(1)
