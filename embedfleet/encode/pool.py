"""Encoders in processes of their own, for the embedded run: every core, and a record that
kills its process costs that record, not the run.

`embedfleet run` has one in-process Celery worker (solo pool), so its encoder is used by one
thread. Two processes of one thread each encode faster than one process of two threads
(docs/benchmarks.md), and a record that makes the encoder's process exit (a native crash,
the kernel's OOM killer) would otherwise end the command. An EncoderPool is the run's
encoder: N spawned children, each holding the model; `encode_batch` deals a chunk's texts
out by length and gathers the vectors back in order. A child that dies raises
WorkerCrashed and is started again on the next call, so `encode_isolating` bisects the
chunk down to the record that killed it, as it does for a record that raises.

Children are new interpreters (`python -c`, a socket pair for the pipe), not forks: the
parent has threads (the worker, the producer, the model's loading thread), and a fork of a
process with running threads can leave the child stuck on a lock one of them held. Nor are
they multiprocessing's spawn: spawn runs the parent's main script again in each child, so a
user's script that calls `embedfleet.run` at its top level (no `if __name__ == "__main__"`)
would start a run in every child.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import numpy as np

from ..settings import Settings, set_settings
from .cpus import available_cpus

log = logging.getLogger(__name__)

# The built-in exception classes a child's failure keeps as its base, so that the tests
# isolation.py makes (transient: ConnectionError, TimeoutError; out of memory: MemoryError,
# RuntimeError and its text) read the same across the pipe.
_BASES: dict[str, type[Exception]] = {
    base.__name__: base
    for base in (MemoryError, ConnectionError, TimeoutError, ValueError, TypeError, RuntimeError, OSError)
}


class WorkerCrashed(Exception):
    """An encoder process died while it encoded (killed, or a record made it exit)."""


class WorkerTimedOut(Exception):
    """An encode ran past the chunk's time limit (a record that hangs native code): its
    process was killed, as the fleet's prefork pool does."""


@dataclass(frozen=True)
class RemoteFailure:
    """An exception raised in a child, as text: the parent need not import the module that
    defines it (torch's OutOfMemoryError would import torch into the parent)."""

    module: str
    name: str
    base: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> RemoteFailure:
        base = next((b.__name__ for b in type(exc).__mro__ if b.__name__ in _BASES and b in _BASES.values()),
                    "Exception")
        return cls(type(exc).__module__, type(exc).__name__, base, str(exc))

    def rebuilt(self) -> Exception:
        """The parent's own class where the parent has its module loaded (EncoderConfigError
        stays one, for the CLI's error handling), else a stand-in of the same name and base."""
        known = getattr(sys.modules.get(self.module), self.name, None)
        if isinstance(known, type) and issubclass(known, Exception):
            try:
                return known(self.message)
            except Exception:  # a constructor that wants other arguments
                pass
        stand_in = type(self.name, (_BASES.get(self.base, Exception),), {"__module__": self.module})
        return stand_in(self.message)


@dataclass(frozen=True)
class Hello:
    """What a child's encoder is, sent once it has loaded."""

    model_name: str
    dimension: int
    max_tokens: int
    device: str
    batch_size: int
    counts_batches: bool
    backend: str | None
    precision: str | None


def _serve(settings: Settings, conn: Connection, log_level: int) -> None:
    """A child's life: load the encoder, then encode what the parent sends until the pipe closes."""
    # Ctrl-C reaches the whole process group; stopping is the parent's to decide, and its
    # exit closes the pipe, which ends this loop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    set_settings(settings)  # code that reads get_settings() here sees the run's settings
    from .encoder import load_encoder

    try:
        encoder = load_encoder(settings)
    except BaseException as exc:
        conn.send(("error", RemoteFailure.of(exc)))
        return
    counts = hasattr(encoder, "on_batch")
    if counts:
        encoder.on_batch = lambda texts: conn.send(("batch", texts))  # type: ignore[attr-defined]
    conn.send(("ready", Hello(
        encoder.model_name, int(encoder.dimension), int(encoder.max_tokens), str(getattr(encoder, "device", "cpu")),
        int(encoder.batch_size), counts, getattr(encoder, "backend", None), getattr(encoder, "precision", None),
    )))
    try:
        while True:
            texts, batch_size = conn.recv()
            try:
                vectors = np.asarray(encoder.encode_batch(texts, batch_size), dtype=np.float32)
            except (BrokenPipeError, ConnectionResetError):
                raise  # on_batch found the parent gone
            except Exception as exc:
                conn.send(("error", RemoteFailure.of(exc)))
                continue
            conn.send(("done", vectors))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the parent closed the pipe or exited: nothing is waiting for this child


def _exit_text(code: int | None) -> str:
    if code is None:
        return "no exit status yet"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


# What a child runs: its end of the socket pair is the file descriptor in argv[1].
_CHILD = "from embedfleet.encode.pool import child_main; child_main()"


def child_main() -> None:
    """A child's entry point: the settings and log level come first on the pipe."""
    conn = Connection(int(sys.argv[1]))
    settings, log_level = conn.recv()
    _serve(settings, conn, log_level)


class _Child:
    def __init__(self, settings: Settings, log_level: int) -> None:
        ours, theirs = socket.socketpair()
        # The parent's import path (a script's folder, a test's PYTHONPATH), so the child
        # imports the same embedfleet and the same custom encoders.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        # A session of its own: Ctrl-C on the terminal reaches the run, which stops the
        # children by closing their pipes; a child never sees it half-way through a batch.
        self.process = subprocess.Popen([sys.executable, "-c", _CHILD, str(theirs.fileno())],
                                        pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        theirs.close()  # ours reads EOF when the child dies
        self.conn = Connection(ours.detach())
        self.conn.send((settings, log_level))
        self.hello: Hello | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def join(self, seconds: float) -> None:
        try:
            self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            pass

    def crashed(self, texts: int) -> WorkerCrashed:
        self.join(5)
        what = {0: "nothing", 1: "1 text"}.get(texts, f"{texts} texts")
        return WorkerCrashed(f"the encoder process (pid {self.process.pid}) died with "
                             f"{_exit_text(self.process.returncode)} while encoding {what}")

    def wait_ready(self) -> Hello:
        try:
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            raise self.crashed(0) from None
        if kind == "error":
            self.join(5)
            raise payload.rebuilt()
        self.hello = payload
        return payload

    def close(self) -> None:
        self.conn.close()
        self.join(5)
        if self.alive():
            self.process.kill()
            self.join(5)


def deal(texts: Sequence[str], children: int, batch_size: int) -> list[list[int]]:
    """The indices of `texts` each child encodes: length-sorted groups of batch_size, the
    heaviest first, each to the child with the fewest characters so far (longest-processing-
    time first), so the children finish close together. A call of at most one batch goes to
    one child: splitting it would give each child a batch too small to be worth the trip."""
    if children <= 1 or len(texts) <= batch_size:
        return [list(range(len(texts)))] + [[] for _ in range(children - 1)]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    groups = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    weight = [sum(len(texts[i]) + 1 for i in group) for group in groups]
    parts: list[list[int]] = [[] for _ in range(children)]
    loads = [0] * children
    for g in sorted(range(len(groups)), key=lambda g: -weight[g]):
        child = loads.index(min(loads))
        parts[child].extend(groups[g])
        loads[child] += weight[g]
    return parts


class EncoderPool:
    """The Encoder contract (model_name, dimension, max_tokens, device, batch_size,
    encode_batch) served by `processes` children of `threads` threads each."""

    on_batch: Callable[[int], None] | None = None

    def __init__(self, settings: Settings, processes: int, threads: int) -> None:
        self._settings = settings.model_copy(update={"torch_threads": threads})
        self._lock = threading.Lock()  # one encode_batch at a time: the children are shared
        self._children: list[_Child | None] = [None] * max(1, processes)
        hello = self._revive()
        self.model_name = hello.model_name
        self.dimension = hello.dimension
        self.max_tokens = hello.max_tokens
        self.device = hello.device
        self.batch_size = hello.batch_size
        self.backend = hello.backend
        self.precision = hello.precision
        self.processes = len(self._children)
        self.threads = threads
        # A pool still open when the interpreter exits (a script that never closes it) tells
        # its children to stop rather than leave them to notice the closed pipe.
        atexit.register(self.close)
        log.info("encoding in %d processes of %d threads (%s)", self.processes, threads, hello.backend or hello.device)

    def _revive(self) -> Hello:
        """Start the children that are not running, all at once (they load in parallel), and
        wait until each has loaded."""
        level = logging.getLogger().getEffectiveLevel()
        started = []
        for slot, child in enumerate(self._children):
            if child is not None and not child.alive():  # died between calls
                log.warning("%s", child.crashed(0))
                child.close()
                child = self._children[slot] = None
            if child is None:
                self._children[slot] = _Child(self._settings, level)
                started.append(slot)
        failure: Exception | None = None
        for slot in started:
            child = self._children[slot]
            assert child is not None
            try:
                child.wait_ready()
            except Exception as exc:
                child.close()
                self._children[slot] = None
                failure = failure or exc
        if failure is not None:
            raise failure
        hello = next(c.hello for c in self._children if c is not None and c.hello is not None)
        return hello

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            try:
                return self._encode(texts, batch_size)
            except WorkerCrashed as crash:
                if len(texts) > 1:
                    raise  # encode_isolating bisects; the half without the killer encodes
                # One text: its dead letter should not be a child that died of something
                # else (another process's memory), so it gets a second fresh process.
                log.warning("%s; trying it once more in a new process", crash)
                return self._encode(texts, batch_size)

    def _encode(self, texts: Sequence[str], batch_size: int | None) -> np.ndarray:
        """One round: start what is not running, deal the texts out, gather them in order,
        within the time limit a fleet worker gives a chunk of this many records."""
        self._revive()
        limit = self._settings.time_limit(len(texts))
        deadline = time.monotonic() + limit
        children = [c for c in self._children if c is not None]
        parts = deal(texts, len(children), batch_size or self.batch_size)
        pending: dict[Connection, tuple[_Child, list[int]]] = {}
        for child, indices in zip(children, parts, strict=True):
            if indices:
                child.conn.send(([texts[i] for i in indices], batch_size))
                pending[child.conn] = (child, indices)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        failure: Exception | None = None
        while pending:
            ready = wait(list(pending), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                for child, indices in pending.values():
                    log.warning("encoder process %s: %d texts still encoding after %.0f s, killing it",
                                child.process.pid, len(indices), limit)
                    child.process.kill()
                    child.close()
                    self._children[self._children.index(child)] = None
                what = "1 text" if len(texts) == 1 else f"{len(texts)} texts"
                raise WorkerTimedOut(f"the encode of {what} ran past its time limit of {limit:.0f} s "
                                     "(EMBEDFLEET_CHUNK_TIME_LIMIT); its encoder process was killed")
            for conn in ready:
                assert isinstance(conn, Connection)
                child, indices = pending[conn]
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    failure = failure or child.crashed(len(indices))
                    child.close()
                    self._children[self._children.index(child)] = None
                    del pending[conn]
                    continue
                if kind == "batch":
                    if self.on_batch is not None:
                        self.on_batch(payload)
                    continue
                del pending[conn]
                if kind == "error":
                    failure = failure or payload.rebuilt()
                    continue
                out[indices] = payload
                assert child.hello is not None
                if self.on_batch is not None and not child.hello.counts_batches:
                    self.on_batch(len(indices))
        if failure is not None:
            raise failure
        return out

    def close(self) -> None:
        with self._lock:
            for slot, child in enumerate(self._children):
                if child is not None:
                    child.close()
                    self._children[slot] = None


def pool_size(settings: Settings) -> int:
    """How many encoder processes the embedded run uses: EMBEDFLEET_EMBEDDED_ENCODERS, else
    one per CPU this process may use; 0 (encode in the run's own process) on a GPU, which
    one process drives best, and where the setting says 0."""
    from .precision import no_gpu_driver

    if settings.embedded_encoders is not None:
        return settings.embedded_encoders
    on_cpu = settings.device == "cpu" or (settings.device == "auto" and no_gpu_driver())
    return available_cpus() if on_cpu else 0


def threads_per_process(settings: Settings, processes: int) -> int:
    """EMBEDFLEET_TORCH_THREADS where set, else the CPUs shared out among the processes."""
    return settings.torch_threads or max(1, available_cpus() // max(1, processes))
