"""The two broker messages: their wire form survives msgpack (how the broker carries them and
how the ledger keeps them), dead records included, and their labels never carry texts."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest
from kombu.serialization import dumps, loads

from embedfleet.chunks.messages import ChunkTexts, ChunkVectors, DeadRecord, chunk_label

SECRET = "TOP-SECRET-CORPUS-TEXT"


def texts_chunk() -> ChunkTexts:
    return ChunkTexts(job_id="j1", seq=7, version_key="docs__v2", model="m", ids=["a", "b", "c"],
                      positions=[10, 11, 12], texts=[f"{SECRET} a", "b é ✓", ""], hashes=["ha", "hb", "hc"],
                      aliases=[["d", 13, "ha", f"{SECRET} a"]])


def vectors_chunk() -> ChunkVectors:
    matrix = np.arange(6, dtype=np.float32).reshape(3, 2) / 7
    dead = [DeadRecord("x", 14, SECRET, "hx", "ValueError", "boom"),
            DeadRecord("y", 15, "", "hy", "WorkerCrashed", "killed")]
    return ChunkVectors(job_id="j1", seq=-3, version_key="docs", model="m", dim=2, ids=["a", "b", "c"],
                        positions=[0, 1, 2], hashes=["ha", "hb", "hc"], vectors=matrix.tobytes(),
                        encode_seconds=0.25, worker="w1@h", dead=dead, splits=2, aliases=[["z", 3, "ha", "t"]])


def test_chunk_texts_round_trips_through_msgpack() -> None:
    """ChunkTexts -> to_wire -> msgpack -> from_wire gives an equal chunk (aliases included)."""
    chunk = texts_chunk()
    assert ChunkTexts.from_wire(msgpack.unpackb(msgpack.packb(chunk.to_wire()))) == chunk


def test_chunk_vectors_round_trips_with_dead_records() -> None:
    """ChunkVectors keeps its dead records as DeadRecord objects, and its vectors as the same bytes."""
    chunk = vectors_chunk()
    back = ChunkVectors.from_wire(msgpack.unpackb(msgpack.packb(chunk.to_wire())))
    assert back == chunk
    assert all(isinstance(d, DeadRecord) for d in back.dead)
    np.testing.assert_array_equal(np.frombuffer(back.vectors, dtype=np.float32).reshape(3, 2),
                                  np.frombuffer(chunk.vectors, dtype=np.float32).reshape(3, 2))


def test_wire_form_is_plain_data_that_celerys_msgpack_serializer_carries() -> None:
    """The wire dicts hold only msgpack-native values: kombu's msgpack serializer (the one Celery
    is configured with) brings both messages back unchanged, vectors still raw bytes."""
    for chunk in (texts_chunk(), vectors_chunk()):
        content_type, encoding, body = dumps(chunk.to_wire(), serializer="msgpack")
        assert content_type == "application/x-msgpack"
        data = loads(body, content_type, encoding, accept=[content_type])
        assert type(chunk).from_wire(data) == chunk
    content_type, encoding, body = dumps(vectors_chunk().to_wire(), serializer="msgpack")
    wire = loads(body, content_type, encoding, accept=[content_type])
    assert isinstance(wire["vectors"], bytes)
    assert wire["dead"][0] == {"record_id": "x", "position": 14, "text": SECRET, "content_hash": "hx",
                               "error_type": "ValueError", "message": "boom"}


def test_a_vectors_message_without_dead_or_optional_fields_still_reads() -> None:
    """Fields with defaults (dead, splits, aliases, worker, encode_seconds) may be absent on the wire."""
    wire = {"job_id": "j", "seq": 0, "version_key": "c", "model": "m", "dim": 1, "ids": ["a"],
            "positions": [0], "hashes": ["h"], "vectors": np.float32(1).tobytes()}
    chunk = ChunkVectors.from_wire(wire)
    assert (chunk.dead, chunk.splits, chunk.aliases, chunk.worker, chunk.encode_seconds) == ([], 0, [], "", 0.0)


def test_texts_wire_form_is_shallow() -> None:
    """to_wire shares the chunk's lists instead of deep-copying them (asdict would copy every text)."""
    chunk = texts_chunk()
    wire = chunk.to_wire()
    assert wire["texts"] is chunk.texts and wire["ids"] is chunk.ids
    assert set(wire) == {f.name for f in dataclasses.fields(ChunkTexts)}


def test_vectors_to_wire_leaves_the_message_untouched() -> None:
    """to_wire writes dead records as dicts in the wire dict only; the message keeps its DeadRecords."""
    chunk = vectors_chunk()
    chunk.to_wire()
    assert all(isinstance(d, DeadRecord) for d in chunk.dead)


def test_messages_are_frozen() -> None:
    """A message is a value: fields cannot be reassigned after it is made."""
    chunk = texts_chunk()
    with pytest.raises(dataclasses.FrozenInstanceError):
        chunk.seq = 8  # type: ignore[misc]

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
