"""A chunk's whole life: wire messages, sending, splits, deliveries, isolation, liveness,
re-sends, dead letters, collect."""
