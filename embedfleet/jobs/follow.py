"""Follow a job in the ledger: a live bar on a terminal, plain periodic lines otherwise (CI logs).

What a person reads, on the bar and on each line: the short job id, records done of the
total, the rate over the last seconds (not the job's average: that hides a slowdown and
freezes the ETA), an ETA from the ledger's remaining records at that rate, the elapsed time,
and the skipped and dead counts. The pure parts (RateWindow, LineClock, the formatting) are
tested on their own; JobProgress feeds them from the ledger.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from ..chunks.messages import ChunkTexts
from ..chunks.sending import Sender, payload_sender
from ..errors import JobEnded
from ..settings import Settings
from .stats import NO_WORKER, JobStats, job_stats

log = logging.getLogger(__name__)

# A dropped connection (terminated by the server, a restart, a network blip) or a server
# briefly down: what a follower waits out instead of failing.
DATABASE_DROPS = (OperationalError, InterfaceError)

# States in which records still move; any other state is the end of the job.
LIVE_STATES = ("submitting", "running")


def backoff(attempt: int, base: float = 0.5, cap: float = 10.0) -> float:
    """Exponential backoff with full jitter over the upper half: 0.5 s, 1 s, 2 s ... 10 s."""
    delay = min(cap, base * 2 ** attempt)
    return delay / 2 + random.uniform(0, delay / 2)


@dataclass
class RateWindow:
    """Records per second over the last `window` seconds, from (time, records done) samples.

    A fleet's ledger moves a chunk at a time; when chunks land further apart than the window,
    the window stretches back to the step before the latest one (at most `horizon` seconds),
    so the rate decays between steps instead of dropping to zero. No step for `horizon`
    seconds, or none seen yet, is no recent progress: the rate is None (shown as '-')."""

    # 30 s, as the ledger's recent rate (jobs/stats.py: RECENT_SECONDS): 10 s swung the ETA.
    window: float = 30.0
    horizon: float = 60.0
    # (time, done) at each change of done, and the first sample; only the steps matter.
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, done: int) -> None:
        if not self.samples or done != self.samples[-1][1]:
            self.samples.append((now, done))
        # Keep the last step older than the horizon: it is the count at the horizon.
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.horizon:
            self.samples.popleft()

    def rate(self, now: float) -> float | None:
        samples = list(self.samples)  # one atomic copy: a display thread may read while we add
        if len(samples) < 2 or now - samples[-1][0] > self.horizon:
            return None
        base = max(min(now - self.window, samples[-2][0]), now - self.horizon, samples[0][0])
        done_then = next(done for t, done in reversed(samples) if t <= base)
        moved = samples[-1][1] - done_then
        if moved <= 0 or now <= base:
            return None
        return moved / (now - base)


def eta_seconds(remaining: int, rate: float | None) -> float | None:
    """Seconds left at the recent rate; None when nothing moved recently."""
    if rate is None or rate <= 0:
        return None
    return max(remaining, 0) / rate


@dataclass
class LineClock:
    """When a plain progress line is due: the first poll, then every `every` seconds."""

    every: float = 10.0
    last: float | None = None

    def due(self, now: float) -> bool:
        if self.last is not None and now - self.last < self.every:
            return False
        self.last = now
        return True


def duration(seconds: float | None) -> str:
    """0:07, 12:34, 1:02:03; '-' for unknown."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class ProgressView:
    """What one progress line or bar shows, at one moment."""

    job_id: str
    state: str
    done: int
    total: int
    skipped: int
    dead: int
    elapsed: float
    rate: float | None
    eta: float | None
    stalled: bool = False
    no_worker: bool = False
    # The fleet's figures (None: not shown, as in the embedded run): chunks being encoded,
    # retries so far, live workers on `embed`.
    in_flight: int = 0
    retries: int = 0
    workers: int | None = None

    @property
    def short_id(self) -> str:
        return self.job_id[:8]

    def figures(self) -> str:
        rate = "-" if self.rate is None else f"{self.rate:,.1f}"
        fleet = ("" if self.workers is None else
                 f", {self.in_flight} chunks in flight, retries {self.retries}, workers {self.workers}")
        return (f"{self.done:,}/{self.total:,} records, {rate} rec/s, ETA {duration(self.eta)}, "
                f"elapsed {duration(self.elapsed)}, skipped {self.skipped:,}, dead {self.dead:,}{fleet}"
                + (f" ({NO_WORKER})" if self.no_worker else "")
                + (" (stalled: nothing moved for a lease)" if self.stalled else ""))

    def line(self) -> str:
        return f"job {self.short_id} {self.state}: {self.figures()}"


def displayed_done(stats: JobStats, encoded: int | None) -> int:
    """Records done as shown: the ledger's count, or, where this process encodes (the
    embedded run counts per batch), the records encoded so far plus those skipped or dead,
    so a long chunk moves the display before it is stored. Never past the total."""
    done = stats.records_done
    if encoded is not None:
        done = max(done, stats.skipped + stats.dead + encoded)
    return min(done, stats.records_read) if stats.records_read else done


def view_of(stats: JobStats, done: int, rate: float | None, wall_now: float) -> ProgressView:
    live = stats.state in LIVE_STATES and not stats.stalled
    return ProgressView(
        job_id=stats.job_id,
        state=stats.state,
        done=done,
        total=stats.records_read,
        skipped=stats.skipped,
        dead=stats.dead,
        elapsed=(stats.finished_at or wall_now) - stats.created_at,
        rate=rate if live else None,
        eta=0.0 if stats.state == "done" else eta_seconds(stats.records_read - done, rate) if live else None,
        stalled=stats.stalled,
        no_worker=stats.no_worker,
        in_flight=stats.chunks_in_flight,
        retries=stats.retries,
        workers=stats.live_workers,
    )


class _FiguresColumn(ProgressColumn):
    """The figures, computed when rich redraws (10 times a second), so the elapsed time and
    the ETA keep ticking between polls of the ledger."""

    def __init__(self, progress: JobProgress) -> None:
        super().__init__()
        self._progress = progress

    def render(self, task: Task) -> Text:
        view = self._progress.view()
        return Text(view.figures() if view is not None else "waiting for the job's first figures")


class JobProgress:
    def __init__(self, engine: Engine, job_id: str, interval: float = 0.25, line_every: float = 10.0,
                 lease_seconds: float | None = None, outage_limit: float = 600.0,
                 sweep: Callable[[], object] | None = None, sweep_every: float = 3.0,
                 encoded: Callable[[], int] | None = None, dead_after: float | None = None,
                 show: bool = True) -> None:
        self.engine = engine
        # False: follow the job in silence (the API's progress=False): no bar, no lines.
        self.show = show
        self.lease_seconds = lease_seconds
        # A heartbeat's dead_after: the display says when no live worker consumes `embed`.
        self.dead_after = dead_after
        # The longest the database may stay unreachable before waiting gives up.
        self.outage_limit = outage_limit
        # Called every sweep_every seconds while waiting: re-sends the job's chunks held by
        # dead workers (chunks/resend.py: resend_stranded), so a waiting producer
        # recovers its job even with no live worker sweeping and no beat.
        self.sweep = sweep
        self.sweep_every = sweep_every
        self._last_sweep = 0.0
        self.job_id = job_id
        self.interval = interval
        # Records encoded so far in this process, counted per batch (the embedded run).
        self.encoded = encoded
        self._console = Console(stderr=True)
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last_poll = 0.0
        self._lines = LineClock(line_every)
        self._rates = RateWindow()
        # The figures rich's refresh thread reads while poll() writes them.
        self._lock = threading.Lock()
        self._done = 0
        self.stats: JobStats | None = None

    def __enter__(self) -> JobProgress:
        if self.show and self._console.is_terminal:
            # Transient: the bar goes when the job ends, and the command's summary is the one
            # final line left on the screen.
            self._bar = Progress(
                TextColumn("[bold]job {task.fields[short_id]}"),
                BarColumn(bar_width=24),  # room for the figures on an 80-column terminal
                _FiguresColumn(self),
                console=self._console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("embedding", total=None, short_id=self.job_id[:8])
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.poll(force=True)
        except DATABASE_DROPS:
            pass  # the last figures are already in self.stats; the drop is said elsewhere
        finally:
            if self._bar is not None:
                self._bar.stop()
        # Off a terminal the last line may be up to line_every old: one more with the final
        # figures, so the lines end where the job did ("finished": the summary that follows
        # is the one line that says "done").
        view = self.view()
        if self.show and self._bar is None and self._lines.last is not None and view is not None \
                and view.state not in LIVE_STATES:
            state = "finished" if view.state == "done" else view.state
            print(f"job {view.short_id} {state}: {view.figures()}", file=sys.stderr, flush=True)

    def view(self) -> ProgressView | None:
        """The figures now: the last poll's counts, the rate and elapsed time as of this moment.
        The rate is the ledger's recent rate (JobStats.recent_rate: what `status` and every
        other follower of the job show), except where this process encodes (the embedded
        run), whose per-batch count runs ahead of the ledger."""
        with self._lock:
            stats, done = self.stats, self._done
            local = self._rates.rate(time.monotonic())
        if stats is None:
            return None
        return view_of(stats, done, local if self.encoded is not None else stats.recent_rate, time.time())

    def poll(self, force: bool = False) -> JobStats | None:
        now = time.monotonic()
        if not force and now - self._last_poll < self.interval:
            return self.stats
        self._last_poll = now
        stats = job_stats(self.engine, self.job_id, self.lease_seconds, self.dead_after)
        done = displayed_done(stats, self.encoded() if self.encoded is not None else None)
        with self._lock:
            self.stats, self._done = stats, done
            self._rates.add(now, done)
        live = stats.state in LIVE_STATES
        if self._bar is not None and self._task is not None:
            total = stats.records_read or (None if live else 1)
            self._bar.update(self._task, total=total, completed=done if stats.records_read or live else 1)
        elif self.show and live and self._lines.due(now):
            # Lines only while the job runs: its end is the command's summary, printed once.
            view = self.view()
            assert view is not None
            print(view.line(), file=sys.stderr, flush=True)
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
        if not self.show:
            log.warning("job %s: %s", self.job_id, line)
        elif self._bar is not None:
            self._bar.console.print(line)
        else:
            print(line, file=sys.stderr, flush=True)


def follow(engine: Engine, job_id: str, settings: Settings, make_sender: Callable[[], Sender],
           timeout: float | None = None, show: bool = True) -> JobStats:
    """Wait for the job with a live display (a bar on a terminal, plain lines otherwise),
    riding out database drops, and re-send its chunks held by dead workers meanwhile, through
    the sender `make_sender` returns (the fleet's, fleet/sending.py), made on first use."""
    from ..chunks.resend import resend_stranded

    senders: list[Sender] = []

    def send(chunk: ChunkTexts) -> None:
        # Made on first use: following needs no broker (`status --watch` on a monitoring
        # host) until a dead worker's chunk has to be re-sent.
        if not senders:
            senders.append(make_sender())
        senders[0](chunk)

    with JobProgress(engine, job_id, lease_seconds=settings.lease_seconds, dead_after=settings.dead_after_seconds,
                     sweep=lambda: resend_stranded(engine, payload_sender(send), settings.dead_after_seconds, job_id),
                     sweep_every=settings.heartbeat_seconds, show=show) as progress:
        return progress.wait_done(timeout=timeout)
