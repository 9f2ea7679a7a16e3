"""The beat schedule, built from settings."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from ..settings import Settings
from .queues import RECONCILE_TASK, REINDEX_TASK


def parse_crontab(expression: str) -> crontab:
    """"minute hour day-of-month month day-of-week", as in a crontab line."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"reindex_cron {expression!r}: expected 5 fields (minute hour day month weekday)")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                   day_of_week=day_of_week)


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {
        # Re-send chunks of jobs that stalled (broker lost their messages). Cheap when
        # nothing stalled: one grouped query over the open chunks.
        "reconcile-stalled-jobs": {"task": RECONCILE_TASK, "schedule": float(settings.reconcile_every_seconds)},
    }
    for name in filter(None, (c.strip() for c in settings.reindex_collections.split(","))):
        schedule[f"reindex-{name}"] = {"task": REINDEX_TASK, "schedule": parse_crontab(settings.reindex_cron),
                                       # Named: Flower's kwargs column shows it (args are hidden).
                                       "kwargs": {"collection": name}}
    return schedule
