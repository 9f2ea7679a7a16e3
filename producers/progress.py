"""Follow a job in the ledger: a live bar on a terminal, plain periodic lines otherwise (CI logs)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import Engine

from storage.ledger import JobStats, LedgerError, job_stats

log = logging.getLogger(__name__)


class JobProgress:
    def __init__(self, engine: Engine, job_id: str, interval: float = 0.25, line_every: float = 10.0,
                 sweep: Callable[[], object] | None = None, sweep_every: float = 3.0) -> None:
        self.engine = engine
        # Called every sweep_every seconds while waiting: re-sends the job's chunks held by
        # dead workers (producers/recovery.py: resend_stranded), so a waiting producer
        # recovers its job even with no live worker sweeping and no beat.
        self.sweep = sweep
        self.sweep_every = sweep_every
        self._last_sweep = 0.0
        self.job_id = job_id
        self.interval = interval
        self.line_every = line_every
        self._console = Console(stderr=True)
        self._bar: Progress | None = None
        self._task = None
        self._last_poll = 0.0
        self._last_line = 0.0
        self.stats: JobStats | None = None

    def __enter__(self) -> "JobProgress":
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

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.poll(force=True, final=True)
        if self._bar is not None:
            self._bar.stop()

    def poll(self, force: bool = False, final: bool = False) -> JobStats | None:
        now = time.monotonic()
        if not force and now - self._last_poll < self.interval:
            return self.stats
        self._last_poll = now
        self.stats = stats = job_stats(self.engine, self.job_id)
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task, total=stats.records_read, completed=stats.records_done, rate=stats.rate, dead=stats.dead
            )
        elif final or now - self._last_line >= self.line_every:
            self._last_line = now
            eta = "?" if stats.eta_seconds is None else f"{stats.eta_seconds:.0f}s"
            print(
                f"job {stats.job_id[:8]} {stats.state}: {stats.records_done}/{stats.records_read} records, "
                f"{stats.rate:.1f} rec/s, dead {stats.dead}, ETA {eta}",
                file=sys.stderr,
                flush=True,
            )
        return stats

    def wait_done(self, timeout: float | None = None) -> JobStats:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            stats = self.poll(force=True)
            assert stats is not None
            if stats.state == "done":
                return stats
            if stats.state == "abandoned":
                raise LedgerError(
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
