"""The Celery app. Producers send by task name through it, so importing it loads no model."""

from celery import Celery

from config.beat import beat_schedule
from config.celeryconfig import celery_config
from config.settings import get_settings

# `include` is imported by workers only, so a producer host never imports torch.
app = Celery("embedfleet", include=["workers.tasks"])
app.conf.update(celery_config(get_settings()), beat_schedule=beat_schedule(get_settings()))
