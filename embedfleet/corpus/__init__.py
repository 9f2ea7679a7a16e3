"""Reading a corpus: sources (files, stdin, SQL, Python iterables), records, validation, chunking."""
