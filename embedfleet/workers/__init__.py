"""The resident encoder, the encode and collect tasks, and the in-process worker."""
