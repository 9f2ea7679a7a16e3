"""embedfleet/fleet/in_place.py: when the encode task stores its own chunk instead of sending it to the collect queue."""

from __future__ import annotations

from embedfleet.fleet.in_place import collects_here, store_lock_timeout
from embedfleet.fleet.queues import COLLECT_QUEUE, DEAD_LETTER_QUEUE, EMBED_QUEUE

ALL = (EMBED_QUEUE, COLLECT_QUEUE, DEAD_LETTER_QUEUE)


def test_a_worker_of_every_queue_collects_a_fresh_chunk_here() -> None:
    """The default worker, first delivery, early in its time limit (or with none, as in the embedded run)."""
    assert collects_here(True, ALL, crashes=0, elapsed=3.0, time_limit=436.0)
    assert collects_here(True, ALL, crashes=0, elapsed=3.0, time_limit=None)


def test_the_setting_turns_it_off() -> None:
    assert not collects_here(False, ALL, crashes=0, elapsed=0.0, time_limit=None)


def test_a_worker_left_out_of_the_collect_queue_leaves_it_to_the_collectors() -> None:
    assert not collects_here(True, (EMBED_QUEUE, DEAD_LETTER_QUEUE), crashes=0, elapsed=0.0, time_limit=None)


def test_a_chunk_that_lost_a_process_goes_to_the_collect_task() -> None:
    """Its crash cap counts collects that kill their process; the store here has none."""
    assert not collects_here(True, ALL, crashes=1, elapsed=0.0, time_limit=None)


def test_less_than_half_the_time_limit_left_goes_to_the_collect_task() -> None:
    """A slow store must not be killed as a hung encode (and the chunk halved for nothing)."""
    assert collects_here(True, ALL, crashes=0, elapsed=218.0, time_limit=436.0)
    assert not collects_here(True, ALL, crashes=0, elapsed=218.5, time_limit=436.0)


def test_the_store_waits_for_a_lock_a_quarter_of_the_time_left() -> None:
    """436 s limit (256 records, defaults), 36 s gone: 100 s a statement; no limit, no lock timeout."""
    assert store_lock_timeout(36.0, 436.0) == 100.0
    assert store_lock_timeout(3.0, None) is None
