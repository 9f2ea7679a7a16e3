"""The Celery settings a worker's log depends on."""

from __future__ import annotations

import logging

from embedfleet.config.celeryconfig import celery_config
from embedfleet.config.settings import Settings


def test_worker_log_lines_carry_their_time_level_process_and_logger() -> None:
    config = celery_config(Settings())
    record = logging.LogRecord("embedfleet.workers.tasks", logging.INFO, __file__, 1, "encoded job=%s", ("j",), None)
    record.processName = "ForkPoolWorker-1"
    line = logging.Formatter(config["worker_log_format"]).format(record)
    assert line.startswith("[") and "INFO/ForkPoolWorker-1] embedfleet.workers.tasks: encoded job=j" in line
    assert "%(asctime)s" in config["worker_log_format"] and "%(asctime)s" in config["worker_task_log_format"]
