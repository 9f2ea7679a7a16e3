"""Settings, the thin Celery app, queues and routes. Never imports torch."""
