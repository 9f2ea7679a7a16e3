"""The progress display: the windowed rate, the ETA, the line a person reads, when plain
lines are printed, and that a finished job's figures are printed once (by the command)."""

from __future__ import annotations

import pytest

from embedfleet.chunks.collect import store_chunk
from embedfleet.jobs.follow import (
    JobProgress,
    LineClock,
    ProgressView,
    RateWindow,
    displayed_done,
    duration,
    eta_seconds,
)
from embedfleet.jobs.stats import job_stats
from embedfleet.store.engine import get_engine
from tests.store.helpers import chunk_vectors, job_with_chunks


def feed(window: RateWindow, start: float, end: float, done: int, per_second: float, step: float = 0.25) -> int:
    """Samples every `step` seconds of a job moving at `per_second`; returns the count at `end`."""
    t = start
    while t <= end + 1e-9:
        window.add(t, int(done + (t - start) * per_second))
        t += step
    return int(done + (end - start) * per_second)


def test_the_rate_is_the_last_seconds_not_the_average() -> None:
    """100 rec/s for 60 s, then 10 rec/s for 20 s: the rate says 10, where the job's average says 77."""
    window = RateWindow(window=10.0)
    done = feed(window, 0.0, 60.0, 0, 100.0)
    done = feed(window, 60.25, 80.0, done, 10.0)
    assert window.rate(80.0) == pytest.approx(10.0, rel=0.05)
    assert done / 80.0 > 70  # the cumulative average it replaces


def test_no_progress_yet_or_for_the_horizon_is_no_rate() -> None:
    window = RateWindow(window=10.0, horizon=60.0)
    window.add(0.0, 0)
    assert window.rate(5.0) is None  # one sample: nothing moved yet
    window.add(1.0, 50)
    assert window.rate(2.0) == pytest.approx(50 / 2.0)  # since following began, while the window fills
    assert window.rate(61.5) is None  # nothing moved for longer than the horizon
    assert eta_seconds(100, window.rate(61.5)) is None


def test_chunks_further_apart_than_the_window_decay_instead_of_dropping_to_zero() -> None:
    """A fleet's ledger moves 256 records every 15 s: the rate stays near 17 rec/s between chunks."""
    window = RateWindow(window=10.0, horizon=60.0)
    for t in range(0, 61):
        window.add(float(t), 256 * (t // 15))
    right_after, just_before = window.rate(60.5), window.rate(74.0)
    assert right_after == pytest.approx(256 / 15.5, rel=0.01)
    assert just_before is not None and 0 < just_before < right_after


def test_eta_is_the_remaining_records_at_the_recent_rate() -> None:
    assert eta_seconds(1000, 50.0) == pytest.approx(20.0)
    assert eta_seconds(-3, 50.0) == 0.0  # done past the total (a re-encoded chunk): no negative ETA
    assert eta_seconds(1000, None) is None
    assert eta_seconds(1000, 0.0) is None


def test_durations_read_as_a_clock() -> None:
    assert [duration(s) for s in (None, 0, 7.4, 62, 3723)] == ["-", "0:00", "0:07", "1:02", "1:02:03"]


def test_a_progress_line_names_the_job_and_every_figure() -> None:
    view = ProgressView(job_id="0123456789abcdef0123456789abcdef", state="running", done=1234, total=10000,
                        skipped=3, dead=1, elapsed=62.0, rate=312.46, eta=28.0)
    assert view.line() == ("job 01234567 running: 1,234/10,000 records, 312.5 rec/s, ETA 0:28, elapsed 1:02, "
                           "skipped 3, dead 1")
    idle = ProgressView(job_id="0123456789abcdef", state="running", done=0, total=10, skipped=0, dead=0,
                        elapsed=3.0, rate=None, eta=None, stalled=True)
    assert "- rec/s, ETA -," in idle.line() and "stalled" in idle.line()


def test_plain_lines_come_first_then_every_interval() -> None:
    clock = LineClock(every=10.0)
    assert [clock.due(t) for t in (100.0, 100.3, 109.9, 110.0, 115.0, 120.5)] == [
        True, False, False, True, False, True]


def test_the_embedded_count_moves_within_a_chunk_and_never_past_the_total(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    job_id = job_with_chunks(engine, {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]})
    stats = job_stats(engine, job_id)
    assert displayed_done(stats, None) == 0  # the ledger: nothing stored yet
    assert displayed_done(stats, 3) == 3  # three texts of the first chunk encoded
    assert displayed_done(stats, 99) == 8
    store_chunk(engine, chunk_vectors(job_id, 0, [0, 1, 2, 3]))
    assert displayed_done(job_stats(engine, job_id), 0) == 4  # the ledger never goes back


def test_plain_lines_while_running_and_none_once_done(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Off a terminal: a line at the first poll and every line_every seconds while the job runs,
    and one with the final figures as it ends, marked finished (the command's summary is the one
    that says done); following a job that is already done prints nothing (`reindex --wait`
    printed the done line twice)."""
    engine = get_engine(sqlite_url)
    job_id = job_with_chunks(engine, {0: [0, 1], 1: [2, 3]})
    with JobProgress(engine, job_id, interval=0.0, line_every=3600.0) as progress:
        progress.poll()
        store_chunk(engine, chunk_vectors(job_id, 0, [0, 1]))
        progress.poll()  # within line_every: no second line
        progress._lines.last = -1e9  # the interval has passed
        progress.poll()
        store_chunk(engine, chunk_vectors(job_id, 1, [2, 3]))
        assert progress.wait_done(timeout=5).state == "done"
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"job {job_id[:8]} running: 0/4 records, - rec/s, ETA -, elapsed 0:00, skipped 0, dead 0",
        lines[1],
        f"job {job_id[:8]} finished: 4/4 records, - rec/s, ETA 0:00, elapsed 0:00, skipped 0, dead 0",
    ]
    # Two records moved just now: a rate and an ETA from it.
    assert lines[1].startswith(f"job {job_id[:8]} running: 2/4 records, ") and "- rec/s" not in lines[1]
    assert "ETA -" not in lines[1]

    with JobProgress(engine, job_id) as again:
        again.wait_done(timeout=5)
    assert capsys.readouterr().err == ""
