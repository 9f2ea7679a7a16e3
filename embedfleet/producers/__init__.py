"""Corpus readers, validation, chunking, job submission and the CLI. Never imports torch."""
