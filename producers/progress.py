"""Follow a job in the ledger: a live bar on a terminal, plain periodic lines otherwise (CI logs)."""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from ..config.messages import ChunkTexts
from ..config.sending import Sender, payload_sender
from ..config.settings import Settings
from ..storage.errors import JobEnded
from ..storage.jobs import JobStats, job_stats

log = logging.getLogger(__name__)

# A dropped connection (terminated by the server, a restart, a network blip) or a server
# briefly down: what a follower waits out instead of failing.
DATABASE_DROPS = (OperationalError, InterfaceError)


def backoff(attempt: int, base: float = 0.5, cap: float = 10.0) -> float:
    """Exponential backoff with full jitter over the upper half: 0.5 s, 1 s, 2 s ... 10 s."""
    delay = min(cap, base * 2 ** attempt)
    return delay / 2 + random.uniform(0, delay / 2)


class JobProgress:
    def __init__(self, engine: Engine, job_id: str, interval: float = 0.25, line_every: float = 10.0,
                 lease_seconds: float | None = None, outage_limit: float = 600.0,
                 sweep: Callable[[], object] | None = None, sweep_every: float = 3.0) -> None:
        self.engine = engine
        self.lease_seconds = lease_seconds
        # The longest the database may stay unreachable before waiting gives up.
        self.outage_limit = outage_limit
        # Called every sweep_every seconds while waiting: re-sends the job's chunks held by
        # dead workers (storage/resend.py: resend_stranded), so a waiting producer
        # recovers its job even with no live worker sweeping and no beat.
        self.sweep = sweep
        self.sweep_every = sweep_every
        self._last_sweep = 0.0
        self.job_id = job_id
        self.interval = interval
        self.line_every = line_every
        self._console = Console(stderr=True)
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last_poll = 0.0
        self._last_line = 0.0
        self.stats: JobStats | None = None

    def __enter__(self) -> JobProgress:
        if self._console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>8.1f} rec/s"),
                TextColumn("dead {task.fields[dead]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self._console,
            )
            self._bar.start()
            self._task = self._bar.add_task("embedding", total=None, rate=0.0, dead=0)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.poll(force=True, final=True)
        except DATABASE_DROPS:
            pass  # the last figures are already in self.stats; the drop is said elsewhere
        finally:
            if self._bar is not None:
                self._bar.stop()

    def poll(self, force: bool = False, final: bool = False) -> JobStats | None:
        now = time.monotonic()
        if not force and now - self._last_poll < self.interval:
            return self.stats
        self._last_poll = now
        self.stats = stats = job_stats(self.engine, self.job_id, self.lease_seconds)
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task, total=stats.records_read, completed=stats.records_done, rate=stats.rate, dead=stats.dead
            )
        elif final or now - self._last_line >= self.line_every:
            self._last_line = now
            eta = "?" if stats.eta_seconds is None else f"{stats.eta_seconds:.0f}s"
            state = f"{stats.state} (stalled)" if stats.stalled else stats.state
            print(
                f"job {stats.job_id[:8]} {state}: {stats.records_done}/{stats.records_read} records, "
                f"{stats.rate:.1f} rec/s, dead {stats.dead}, ETA {eta}",
                file=sys.stderr,
                flush=True,
            )
        return stats

    def wait_done(self, timeout: float | None = None) -> JobStats:
        """The job's figures once it is done. Through a database drop it keeps polling, with
        backoff, for up to outage_limit seconds; a cancelled or abandoned job raises JobEnded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        lost_since: float | None = None
        attempt = 0
        while True:
            try:
                stats = self.poll(force=True)
            except DATABASE_DROPS as exc:
                now = time.monotonic()
                if lost_since is None:
                    lost_since = now
                    self._say(f"lost the database connection ({str(getattr(exc, 'orig', exc)).splitlines()[0]}); "
                              "still waiting, retrying with backoff")
                if now - lost_since > self.outage_limit:
                    raise
                time.sleep(backoff(attempt))
                attempt += 1
                continue
            if lost_since is not None:
                self._say(f"database reachable again after {time.monotonic() - lost_since:.1f} s")
                lost_since, attempt = None, 0
            assert stats is not None
            if stats.state == "done":
                return stats
            if stats.state == "cancelled":
                raise JobEnded(
                    f"job {self.job_id} was cancelled: {stats.stored} records stored, {stats.dead} dead, "
                    f"of {stats.records_read} read"
                )
            if stats.state == "abandoned":
                raise JobEnded(
                    f"job {self.job_id} was abandoned: its producer stopped before sending every chunk "
                    f"({stats.records_done} of {stats.records_read} records done). Submit the corpus again: "
                    "records already stored are skipped as unchanged."
                )
            if self.sweep is not None and time.monotonic() - self._last_sweep >= self.sweep_every:
                self._last_sweep = time.monotonic()
                try:
                    self.sweep()
                except Exception as exc:  # the database or broker may be down: keep waiting
                    log.warning("sweep for stranded chunks failed: %s: %s", type(exc).__name__, exc)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} not done after {timeout}s: {stats.as_dict()}")
            time.sleep(self.interval)

    def _say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line)
        else:
            print(line, file=sys.stderr, flush=True)


def follow(engine: Engine, job_id: str, settings: Settings, timeout: float | None = None) -> JobStats:
    """Wait for the job with a live display (a bar on a terminal, plain lines otherwise),
    riding out database drops, and re-send its chunks held by dead workers meanwhile."""
    from ..storage.resend import resend_stranded
    from .sending import fleet_sender

    senders: list[Sender] = []

    def send(chunk: ChunkTexts) -> None:
        # Made on first use: following needs no broker (`status --watch` on a monitoring
        # host) until a dead worker's chunk has to be re-sent.
        if not senders:
            senders.append(fleet_sender(settings))
        senders[0](chunk)

    with JobProgress(engine, job_id, lease_seconds=settings.lease_seconds,
                     sweep=lambda: resend_stranded(engine, payload_sender(send), settings.dead_after_seconds, job_id),
                     sweep_every=settings.heartbeat_seconds) as progress:
        return progress.wait_done(timeout=timeout)
