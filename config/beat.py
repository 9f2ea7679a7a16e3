"""The beat schedule, built from settings."""

from __future__ import annotations

from typing import Any

from config.queues import RECONCILE_TASK
from config.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        # Re-send chunks of jobs that stalled (broker lost their messages). Cheap when
        # nothing stalled: one grouped query over the open chunks.
        "reconcile-stalled-jobs": {"task": RECONCILE_TASK, "schedule": float(settings.reconcile_every_seconds)},
    }
