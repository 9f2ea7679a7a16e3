"""The pool watchdog's judgement (embedfleet/fleet/watchdog.py), on a clock the test moves."""

from __future__ import annotations

from embedfleet.fleet.watchdog import PoolView, PoolWatchdog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_waiting_chunk_with_an_idle_process_is_a_stall_only_after_stall_seconds() -> None:
    clock = Clock()
    watchdog = PoolWatchdog(30, clock)
    stuck = PoolView(waiting=1, idle_up=1)
    assert not watchdog.stalled(stuck)
    clock.now += 29
    assert not watchdog.stalled(stuck)
    clock.now += 1
    assert watchdog.stalled(stuck)


def test_any_healthy_look_restarts_the_count() -> None:
    clock = Clock()
    watchdog = PoolWatchdog(30, clock)
    assert not watchdog.stalled(PoolView(waiting=1, idle_up=1))
    clock.now += 20
    assert not watchdog.stalled(PoolView(waiting=0, idle_up=1))  # the chunk was taken
    clock.now += 20
    assert not watchdog.stalled(PoolView(waiting=1, idle_up=1))
    clock.now += 29
    assert not watchdog.stalled(PoolView(waiting=1, idle_up=1))


def test_a_process_still_loading_its_model_is_not_a_stall() -> None:
    # A replacement process loading a large model is not up: the chunk waits for it, rightly.
    clock = Clock()
    watchdog = PoolWatchdog(30, clock)
    for _ in range(10):
        assert not watchdog.stalled(PoolView(waiting=1, idle_up=0))
        clock.now += 60


def test_a_pool_it_cannot_read_is_never_judged() -> None:
    clock = Clock()
    watchdog = PoolWatchdog(30, clock)
    for _ in range(3):
        assert not watchdog.stalled(None)
        clock.now += 60
