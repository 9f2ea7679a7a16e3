"""Celery only: the app and its config, queues, beat, the tasks, heartbeat, watchdog, the
resident model, the fleet's sender."""
