"""The Celery app. Producers send by task name through it, so importing it loads no model."""

from celery import Celery

from ..settings import get_settings
from .beat import beat_schedule
from .celeryconfig import celery_config

# `include` is imported by workers only, so a producer host never imports torch.
app = Celery("embedfleet", include=["embedfleet.fleet.tasks", "embedfleet.fleet.job_tasks"])
app.conf.update(celery_config(get_settings()), beat_schedule=beat_schedule(get_settings()))
