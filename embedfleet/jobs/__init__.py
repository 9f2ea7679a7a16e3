"""A job's life above its chunks: submit, incremental change detection, following, reindex,
redrive, stats, metrics."""
