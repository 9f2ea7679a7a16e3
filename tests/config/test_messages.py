"""The labels Flower shows for a chunk's tasks: chunk first, then its collection version, then the short job id."""

from __future__ import annotations

from embedfleet.config.messages import ChunkTexts, ChunkVectors, DeadRecord, chunk_label

JOB = "1a2b3c4d5e6f708192a3b4c5d6e7f809"


def test_chunk_label_leads_with_the_chunk_then_collection_then_short_job() -> None:
    assert chunk_label(3, "docs", JOB, 58) == "chunk 3/58 docs job 1a2b3c4d"
    assert chunk_label(3, "docs__v2", JOB) == "chunk 3 docs__v2 job 1a2b3c4d"
    assert chunk_label(-1, "docs", JOB) == "chunk -1 docs job 1a2b3c4d"  # a half of a crash split


def test_message_labels_never_show_texts_and_count_records() -> None:
    texts = ChunkTexts(job_id=JOB, seq=3, version_key="docs", model="m", ids=["a", "b"], positions=[0, 1],
                       texts=["secret one", "secret two"], hashes=["h", "i"], aliases=[["c", 2, "h", "secret one"]])
    assert texts.label() == "chunk 3 docs job 1a2b3c4d, 3 records"
    assert texts.label(58) == "chunk 3/58 docs job 1a2b3c4d, 3 records"
    vectors = ChunkVectors(job_id=JOB, seq=3, version_key="docs", model="m", dim=4, ids=["a"], positions=[0],
                           hashes=["h"], vectors=b"", dead=[DeadRecord("b", 1, "secret two", "i", "ValueError", "x")])
    assert vectors.label() == "chunk 3 docs job 1a2b3c4d, 1 vectors, 1 dead"
    assert "secret" not in texts.label() + vectors.label()
