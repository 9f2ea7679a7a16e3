"""The embedded run's encoder processes: real spawned children, test encoders (no model)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from embedfleet.chunks.isolation import encode_isolating, is_out_of_memory, is_transient
from embedfleet.encode.encoder import EncoderConfigError
from embedfleet.encode.pool import EncoderPool, RemoteFailure, WorkerCrashed, deal, pool_size, threads_per_process
from embedfleet.settings import Settings
from tests.encode.fake_encoders import HashEncoder

PROBE = "tests.encode.fake_encoders:PoolProbeEncoder"


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("probe")


@pytest.fixture(scope="module")
def pool(probe_dir: Path) -> EncoderPool:
    # Spawned children read the environment at start: PROBE_DIR is set before they are.
    os.environ["PROBE_DIR"] = str(probe_dir)
    try:
        pool = EncoderPool(Settings(encoder=PROBE), processes=2, threads=1)
    finally:
        del os.environ["PROBE_DIR"]
    yield pool
    pool.close()


def texts_of(count: int) -> list[str]:
    # Lengths from 1 to 200 characters, out of order, so the pool's length sort moves them.
    return [f"{i} " + "x" * ((i * 37) % 200) for i in range(count)]


def test_deal_covers_every_text_once_and_balances() -> None:
    texts = texts_of(300)
    parts = deal(texts, 2, 32)
    assert sorted(parts[0] + parts[1]) == list(range(300))
    assert abs(len(parts[0]) - len(parts[1])) <= 32
    chars = [sum(len(texts[i]) for i in part) for part in parts]
    assert abs(chars[0] - chars[1]) / sum(chars) < 0.05
    # Three children, one text far longer than the rest: the children's loads differ by at
    # most one group's weight (the groups go heaviest first to the lightest child).
    skewed = ["y" * 5000, *texts_of(200)]
    parts = deal(skewed, 3, 16)
    assert sorted(i for part in parts for i in part) == list(range(201))
    loads = [sum(len(skewed[i]) + 1 for i in part) for part in parts]
    assert max(loads) - min(loads) <= 5000 + 16 * 200


def test_deal_keeps_one_batch_in_one_child() -> None:
    assert deal(texts_of(32), 2, 32) == [list(range(32)), []]
    assert deal(texts_of(5), 1, 2) == [list(range(5))]


def test_remote_failure_keeps_name_base_and_message() -> None:
    class OperationalError(ConnectionError):
        pass

    failure = RemoteFailure.of(OperationalError("server closed the connection"))
    rebuilt = failure.rebuilt()
    assert type(rebuilt).__name__ == "OperationalError" and isinstance(rebuilt, ConnectionError)
    assert str(rebuilt) == "server closed the connection" and is_transient(rebuilt)
    # A class whose module the parent has loaded comes back as itself.
    assert type(RemoteFailure.of(EncoderConfigError("bad")).rebuilt()) is EncoderConfigError
    oom = RemoteFailure("torch", "OutOfMemoryError", "RuntimeError", "CUDA out of memory").rebuilt()
    assert is_out_of_memory(oom) and isinstance(oom, RuntimeError)


def test_pool_reads_the_encoders_contract(pool: EncoderPool) -> None:
    assert (pool.dimension, pool.max_tokens, pool.batch_size, pool.processes) == (8, 256, 32, 2)
    assert pool.encode_batch([]).shape == (0, 8)


def test_vectors_come_back_in_order_from_both_children(pool: EncoderPool, probe_dir: Path) -> None:
    texts = texts_of(500)
    for old in probe_dir.iterdir():
        old.unlink()
    got = pool.encode_batch(texts)
    want = HashEncoder(Settings()).encode_batch(texts)
    np.testing.assert_array_equal(got, want)
    pids = {int(p.name) for p in probe_dir.iterdir()}
    assert len(pids) == 2 and os.getpid() not in pids


def test_on_batch_counts_every_text(pool: EncoderPool) -> None:
    counted: list[int] = []
    pool.on_batch = counted.append
    try:
        pool.encode_batch(texts_of(130))
    finally:
        pool.on_batch = None
    assert sum(counted) == 130 and len(counted) > 2


def test_an_encoder_error_comes_back_with_its_type(pool: EncoderPool) -> None:
    with pytest.raises(ValueError, match="cannot encode"):
        pool.encode_batch([*texts_of(100), "RAISE"])
    assert pool.encode_batch(["still here"]).shape == (1, 8)


def test_a_child_that_dies_raises_worker_crashed_and_is_replaced(pool: EncoderPool) -> None:
    with pytest.raises(WorkerCrashed, match=r"exit status 3 while encoding \d+ texts"):
        pool.encode_batch([*texts_of(100), "EXIT"])
    texts = texts_of(200)
    np.testing.assert_array_equal(pool.encode_batch(texts), HashEncoder(Settings()).encode_batch(texts))


def test_isolation_finds_the_record_that_kills_its_process(pool: EncoderPool) -> None:
    texts = texts_of(40)
    texts[13] = "EXIT here"
    texts[27] = "OOM but alone it encodes"
    outcome = encode_isolating(lambda batch, size: pool.encode_batch(batch, batch_size=size), texts, 8, 32)
    assert [(f.index, f.error_type) for f in outcome.failures] == [(13, "WorkerCrashed")]
    assert sorted(outcome.vectors) == [i for i in range(40) if i != 13]
    want = HashEncoder(Settings()).encode_batch(texts)
    for index, vector in outcome.vectors.items():
        np.testing.assert_array_equal(vector, want[index])


def test_a_model_that_cannot_load_fails_in_the_parent_with_its_own_type() -> None:
    with pytest.raises(EncoderConfigError, match="cannot be imported"):
        EncoderPool(Settings(encoder="tests.encode.fake_encoders:NoSuchEncoder"), processes=2, threads=1)


def test_close_ends_the_children() -> None:
    pool = EncoderPool(Settings(encoder=PROBE), processes=1, threads=1)
    processes = [c.process for c in pool._children if c is not None]
    pool.close()
    assert processes and all(p.poll() is not None for p in processes)


def test_pool_size_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("embedfleet.encode.pool.available_cpus", lambda: 4)
    assert pool_size(Settings(device="cpu")) == 4
    assert pool_size(Settings(device="cuda")) == 0
    assert pool_size(Settings(device="cpu", embedded_encoders=0)) == 0
    assert pool_size(Settings(device="cuda", embedded_encoders=3)) == 3
    assert threads_per_process(Settings(), 4) == 1
    assert threads_per_process(Settings(), 2) == 2
    assert threads_per_process(Settings(torch_threads=3), 2) == 3


def test_a_record_that_hangs_is_timed_out_and_isolated() -> None:
    # The limit shortened from 180 s + 0.25 s per record: a hang is found only by waiting the
    # limit out, and the default is safe because a chunk of 256 encodes in seconds here.
    pool = EncoderPool(Settings(encoder=PROBE, chunk_time_limit=1.0, chunk_time_per_record=0.0), processes=2,
                       threads=1)
    try:
        texts = texts_of(40)
        texts[5] = "HANG"
        outcome = encode_isolating(lambda batch, size: pool.encode_batch(batch, batch_size=size), texts, 8, 8)
        assert [(f.index, f.error_type) for f in outcome.failures] == [(5, "WorkerTimedOut")]
        assert "time limit of 1 s" in outcome.failures[0].message
        assert sorted(outcome.vectors) == [i for i in range(40) if i != 5]
    finally:
        pool.close()
