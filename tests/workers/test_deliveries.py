"""Delivery counting: when a chunk has crashed its process too often."""

from __future__ import annotations

from embedfleet.config.settings import Settings
from embedfleet.workers.deliveries import crashed_too_often


def test_crash_cap_arithmetic() -> None:
    """A producer's chunk splits after max_deliveries crashes, a split-born half after crash_split_deliveries;
    retries do not count as crashes."""
    settings = Settings(max_deliveries=5, crash_split_deliveries=2)
    assert not crashed_too_often(5, 0, 7, settings) and crashed_too_often(6, 0, 7, settings)
    assert not crashed_too_often(6, 2, 7, settings)
    assert not crashed_too_often(2, 0, -1, settings) and crashed_too_often(3, 0, -1, settings)
