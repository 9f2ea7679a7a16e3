"""The beat schedule: crontab parsing and the entries built from settings."""

from __future__ import annotations

import pytest

from embedfleet.fleet.beat import beat_schedule, parse_crontab
from embedfleet.fleet.queues import RECONCILE_TASK, REINDEX_TASK
from embedfleet.settings import Settings


def test_crontab_fields_are_minute_hour_day_month_weekday() -> None:
    """The five fields land in crontab's minute, hour, day of month, month and weekday."""
    schedule = parse_crontab("30 2 1-7 * 1-5")
    assert schedule.minute == {30}
    assert schedule.hour == {2}
    assert schedule.day_of_month == set(range(1, 8))
    assert schedule.month_of_year == set(range(1, 13))
    assert schedule.day_of_week == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("expression", ["0 2 * *", "0 2 * * * *", ""])
def test_a_crontab_without_five_fields_is_refused(expression: str) -> None:
    """Fewer or more than five fields is a ValueError that says what was expected."""
    with pytest.raises(ValueError, match="expected 5 fields"):
        parse_crontab(expression)


def test_without_reindex_collections_only_the_reconciler_runs() -> None:
    """The default schedule re-sends stalled jobs every reconcile_every_seconds, nothing else."""
    schedule = beat_schedule(Settings(reconcile_every_seconds=45))
    assert schedule == {"reconcile-stalled-jobs": {"task": RECONCILE_TASK, "schedule": 45.0}}


def test_each_listed_collection_gets_its_own_reindex_entry() -> None:
    """reindex_collections is a comma list (blanks ignored); each name is one entry on reindex_cron."""
    schedule = beat_schedule(Settings(reindex_collections=" docs, tickets,,", reindex_cron="15 3 * * *"))
    assert set(schedule) == {"reconcile-stalled-jobs", "reindex-docs", "reindex-tickets"}
    entry = schedule["reindex-tickets"]
    assert entry["task"] == REINDEX_TASK and entry["kwargs"] == {"collection": "tickets"} and "args" not in entry
    assert entry["schedule"].minute == {15} and entry["schedule"].hour == {3}
