"""embedfleet: turn large text corpora into vectors on a fleet of Celery workers."""
