"""SQL storage: engine, schema, ledger rows, vectors, bulk writes, pgvector, collections, export, search."""
