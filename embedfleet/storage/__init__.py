"""SQL storage: schema, engines, the chunk ledger, vector writes and reads. Never imports torch."""
