"""The OpenVINO backend: when it is chosen, that it keeps the torch encoder's contract on the
real model, and that its on-disk cache is reused, rebuilt when damaged, and remembers a
failed quality check. One conversion is shared by the module (a few seconds); the tests
that must convert again use caches of their own."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from embedfleet.encode import precision
from embedfleet.encode.encoder import EncoderConfigError, SentenceTransformerEncoder, encoder_class, load_encoder
from embedfleet.settings import Settings
from tests.conftest import BIN, REPO, SAMPLE, commit_text, read_records

# A sitecustomize that hides openvino from every interpreter started with it on the path:
# the run's encoder processes are new interpreters and see the same path.
HIDE_OPENVINO = "import sys\nsys.modules['openvino'] = None\n"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [commit_text(r) for r in read_records(SAMPLE)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openvino-cache")


@pytest.fixture(scope="module")
def ov_encoder(cache: Path):  # type: ignore[no-untyped-def]
    pytest.importorskip("openvino")
    from embedfleet.encode.openvino import OpenVINOEncoder

    return OpenVINOEncoder(Settings(device="cpu", openvino_cache=str(cache)), "bf16")


@pytest.fixture(scope="module")
def fp32_encoder() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(Settings(precision="fp32", device="cpu"))


def _entries(cache: Path) -> list[str]:
    """What the cache holds besides its lock files and its file digests."""
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock") and p.name != ".digests.json")


def _entry_state(entry: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}


# --- choosing the backend (pure logic: the hardware and the package are stand-ins) ---------

@pytest.mark.parametrize("machine, installed, device, dtype, expected", [
    ("x86_64", True, "cpu", "bf16", "openvino"),  # AMX / AVX-512 BF16: OpenVINO bf16
    ("x86_64", True, "cpu", "fp32", "openvino"),  # AVX2 (or fp32 asked for): OpenVINO f32, measured to win too
    ("AMD64", True, "cpu", "fp32", "openvino"),  # Windows spells it so
    ("x86_64", False, "cpu", "bf16", "torch"),  # no package: torch, silently (auto)
    ("aarch64", True, "cpu", "fp32", "torch"),  # another architecture: OpenVINO not measured there
    ("x86_64", True, "cuda:0", "bf16", "torch"),  # CUDA is always torch
])
def test_auto_backend_choice(monkeypatch: pytest.MonkeyPatch, machine, installed, device, dtype, expected) -> None:
    """auto takes OpenVINO on an x86 CPU with the package installed, in either CPU precision."""
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    monkeypatch.setattr(precision, "openvino_installed", lambda: installed)
    assert precision.resolve_backend("auto", device, dtype) == expected


def test_a_named_backend_is_kept() -> None:
    """torch and openvino asked for by name are what is used."""
    assert precision.resolve_backend("torch", "cpu", "bf16") == "torch"
    assert precision.resolve_backend("openvino", "cpu", "fp32") == "openvino"


# --- the package missing ----------------------------------------------------------------------

def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend=openvino without the package names the fix; auto quietly keeps torch."""
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an uninstalled package looks like to import
    assert not precision.openvino_installed()
    with pytest.raises(EncoderConfigError, match=r"pip install 'embedfleet\[openvino\]'"):
        load_encoder(Settings(backend="openvino"))
    assert encoder_class(Settings(backend="auto")) is SentenceTransformerEncoder
    assert precision.resolve_backend("auto", "cpu", "bf16") == "torch"


def test_missing_package_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    """`embedfleet run` with EMBEDFLEET_BACKEND=openvino and no package: one line, exit 2, no traceback."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "hello"}\n')
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text(HIDE_OPENVINO)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EMBEDFLEET_BACKEND": "openvino",
           "PYTHONPATH": os.pathsep.join([str(hidden), str(REPO)])}
    done = subprocess.run([str(BIN / "embedfleet"), "run", str(corpus), "--collection", "c",
                           "--db", f"sqlite:///{tmp_path / 'e.db'}"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'embedfleet[openvino]'" in done.stderr and "Traceback" not in done.stderr


# --- the contract, on the real model ----------------------------------------------------------

@pytest.mark.slow
def test_auto_picks_openvino_on_this_cpu(tmp_path: Path) -> None:
    """Here (x86), the default settings load the OpenVINO backend, in bf16 where the CPU has
    AVX-512 BF16 or AMX and in fp32 where it has not (an AVX2-only CPU). A cache of its own:
    the module's cache holds the bf16 entry alone (test_second_load_reads_the_cache)."""
    pytest.importorskip("openvino")
    if precision.resolve_backend("auto", "cpu", "fp32") != "openvino":
        pytest.skip("not an x86 CPU: auto keeps torch")
    encoder = load_encoder(Settings(device="cpu", openvino_cache=str(tmp_path)))
    assert type(encoder).__name__ == "OpenVINOEncoder"
    assert encoder.precision == ("bf16" if precision.cpu_has_fast_bf16() else "fp32")  # type: ignore[attr-defined]


@pytest.mark.slow
def test_same_attributes_and_output_as_torch(ov_encoder, fp32_encoder, texts) -> None:
    """The attributes the pipeline reads match the torch encoder's; output is (n, 384) float32 unit rows."""
    for name in ("model_name", "dimension", "max_tokens", "device", "batch_size", "batch_tokens"):
        assert getattr(ov_encoder, name) == getattr(fp32_encoder, name), name
    matrix = ov_encoder.encode_batch(texts[:40])
    assert matrix.shape == (40, 384) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert ov_encoder.encode_batch([]).shape == (0, 384)


@pytest.mark.slow
def test_same_tokens_as_sentence_transformers(ov_encoder, reference_model, texts) -> None:
    """Every record of the sample gives the token ids sentence-transformers gives (window and truncation included)."""
    for start in range(0, len(texts), 100):
        batch = texts[start:start + 100]
        expected = reference_model.tokenize(batch)["input_ids"].numpy()
        got = ov_encoder.tokenizer(batch, padding=True, truncation="longest_first", max_length=ov_encoder.max_tokens,
                                   return_tensors="np")["input_ids"]
        np.testing.assert_array_equal(got, expected)
    assert expected.shape[1] == 256  # the sample has records past the window: truncation was exercised


def test_a_huge_text_is_embedded_as_its_window(ov_encoder) -> None:
    """OpenVINO cuts long texts before its tokenizer too (embedfleet/encode/window.py): a 2 MB text's
    vector is the vector of the text cut by hand well past the window."""
    huge = " ".join(["search", "vector", "índex", "fleet", "日本"][i % 5] for i in range(400_000))
    model = ov_encoder._compiled()
    reached: list[int] = []
    features = model.features

    def spy(texts):  # type: ignore[no-untyped-def]  # the real tokenizer call, watched
        reached.extend(len(t) for t in texts)
        return features(texts)

    model.features = spy
    try:
        vectors = ov_encoder.encode_batch([huge, huge[:20_000], "short"])
    finally:
        del model.features
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert max(reached) <= 20_000, reached  # without the cut, 2 MB reach the tokenizer


@pytest.mark.slow
def test_vectors_match_torch_fp32_on_the_sample(ov_encoder, fp32_encoder, texts) -> None:
    """Cosine >= 0.999 to torch fp32 for every record of samples/celery_commits_500.jsonl."""
    cosine = (ov_encoder.encode_batch(texts) * fp32_encoder.encode_batch(texts)).sum(axis=1)
    print(f"OpenVINO bf16 vs torch fp32 on {len(texts)} records: min {cosine.min():.6f}, mean {cosine.mean():.6f}")
    assert cosine.min() >= 0.999


@pytest.mark.slow
def test_batches_are_reported_and_padding_does_not_matter(ov_encoder, texts) -> None:
    """on_batch hears every forward pass; a text alone gives its vector in a padded batch."""
    heard: list[int] = []
    ov_encoder.on_batch = heard.append
    try:
        batch = ov_encoder.encode_batch(texts[:48], batch_size=16)
    finally:
        ov_encoder.on_batch = None
    assert len(heard) >= 3 and sum(heard) == 48
    alone = np.stack([ov_encoder.encode_batch([t])[0] for t in texts[:6]])
    assert (alone * batch[:6]).sum(axis=1).min() >= 0.9999


# --- streams: several batches in flight in one process ---------------------------------------

def test_streams_follow_the_threads_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """One stream by default; 0 is 2 streams from 2 threads up and 1 on one thread; a setting wins, capped at
    one per thread."""
    from embedfleet.encode.openvino import streams_for

    assert Settings().openvino_streams == 1
    assert [streams_for(threads, 0) for threads in (1, 2, 3, 16)] == [1, 2, 2, 2]
    assert streams_for(2, 1) == 1 and streams_for(16, 4) == 4 and streams_for(2, 8) == 2
    monkeypatch.setenv("EMBEDFLEET_OPENVINO_STREAMS", "3")
    assert Settings().openvino_streams == 3


def test_spread_halves_batches_until_each_stream_has_one() -> None:
    """A call with fewer batches than streams is split so no stream idles; every index kept once, in order."""
    from embedfleet.encode.openvino import spread

    assert spread([[0, 1, 2, 3, 4]], 2) == [[0, 1, 2], [3, 4]]
    assert spread([[0, 1, 2, 3], [4]], 3) == [[0, 1], [2, 3], [4]]
    assert spread([[0]], 2) == [[0]]  # one text cannot be split
    assert spread([[0, 1], [2, 3]], 2) == [[0, 1], [2, 3]]  # enough batches: unchanged


@pytest.fixture(scope="module")
def one_stream(cache: Path):  # type: ignore[no-untyped-def]
    pytest.importorskip("openvino")
    from embedfleet.encode.openvino import OpenVINOEncoder

    return OpenVINOEncoder(Settings(device="cpu", openvino_cache=str(cache), torch_threads=2, openvino_streams=1),
                           "bf16")


@pytest.fixture(scope="module")
def two_streams(cache: Path):  # type: ignore[no-untyped-def]
    pytest.importorskip("openvino")
    from embedfleet.encode.openvino import OpenVINOEncoder

    return OpenVINOEncoder(Settings(device="cpu", openvino_cache=str(cache), torch_threads=2, openvino_streams=2),
                           "bf16")


@pytest.fixture(scope="module")
def uneven(texts) -> list[str]:
    """Prose, paths and one-liners shuffled together: many batches of uneven lengths, in no order."""
    mixed = texts[:120] + [t.splitlines()[0] for t in texts[120:240]] + ["retry", "x" * 3000]
    return [mixed[i] for i in np.random.default_rng(7).permutation(len(mixed))]


@pytest.mark.slow
def test_the_streams_setting_is_what_openvino_runs(one_stream, two_streams) -> None:
    """openvino_streams=1 compiles one stream with the latency hint; 2 compiles two, on the same 2 threads."""
    one, two = one_stream._model.compiled, two_streams._model.compiled
    assert (one.get_property("NUM_STREAMS"), str(one.get_property("PERFORMANCE_HINT"))) == (1, "LATENCY")
    assert (two.get_property("NUM_STREAMS"), str(two.get_property("PERFORMANCE_HINT"))) == (2, "THROUGHPUT")
    assert one.get_property("INFERENCE_NUM_THREADS") == two.get_property("INFERENCE_NUM_THREADS") == 2
    assert one_stream._model.streams == 1 and two_streams._model.streams == 2


@pytest.mark.slow
def test_streams_keep_the_input_order_and_the_vectors(one_stream, two_streams, uneven) -> None:
    """Many batches of uneven lengths in flight two at a time: row i is text i's vector, as with one stream."""
    one = one_stream.encode_batch(uneven, batch_size=8)
    two = two_streams.encode_batch(uneven, batch_size=8)
    assert two.shape == (len(uneven), 384)
    cosine = (one * two).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine.min()
    # Order, not only the set of rows: a text's row is its own vector, not a neighbour's.
    alone = np.stack([one_stream.encode_batch([uneven[i]])[0] for i in (0, 1, len(uneven) - 1)])
    assert (alone * two[[0, 1, len(uneven) - 1]]).sum(axis=1).min() >= 0.9999


@pytest.mark.slow
def test_streams_report_every_batch(two_streams, uneven) -> None:
    """on_batch hears each batch once, on the calling thread, and the counts add up to the texts."""
    import threading

    from embedfleet.encode.encoder import token_batches
    from embedfleet.tokens import estimate_tokens

    heard: list[tuple[int, str]] = []
    two_streams.on_batch = lambda n: heard.append((n, threading.current_thread().name))
    try:
        two_streams.encode_batch(uneven, batch_size=8)
    finally:
        two_streams.on_batch = None
    batches = token_batches([estimate_tokens(t, two_streams.max_tokens) for t in uneven], 8, two_streams.batch_tokens)
    assert [n for n, _ in heard] == [len(b) for b in batches]
    assert sum(n for n, _ in heard) == len(uneven)
    assert {name for _, name in heard} == {threading.current_thread().name}


@pytest.mark.slow
def test_a_one_batch_call_uses_both_streams(one_stream, two_streams, texts) -> None:
    """A call of one batch is halved across the two streams (two batches heard), same vectors in order."""
    heard: list[int] = []
    two_streams.on_batch = heard.append
    try:
        two = two_streams.encode_batch(texts[:10])
    finally:
        two_streams.on_batch = None
    assert heard == [5, 5]
    assert (two * one_stream.encode_batch(texts[:10])).sum(axis=1).min() >= 0.9999


@pytest.mark.slow
def test_streams_are_safe_from_two_threads_at_once(two_streams, uneven) -> None:
    """Two threads calling encode_batch at once each get their own texts' vectors."""
    from concurrent.futures import ThreadPoolExecutor

    halves = [uneven[::2], uneven[1::2]]
    expected = [two_streams.encode_batch(h, batch_size=8) for h in halves]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda h: two_streams.encode_batch(h, batch_size=8), halves * 2))
    for vectors, reference in zip(got, expected * 2, strict=True):
        assert (vectors * reference).sum(axis=1).min() >= 0.9999


@pytest.mark.slow
def test_one_caller_infers_at_a_time(two_streams, uneven, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads calling encode_batch at once (the embedded run's pool) take turns: two callers'
    requests in flight at once hung both in start_async (see CompiledSentenceModel.lock)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    model = two_streams._model
    real = model.embed_batches
    inside, most = [0], [0]

    def counting(batches):  # type: ignore[no-untyped-def]
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        try:
            yield from real(batches)
            time.sleep(0.05)  # a wide window for the other thread to come in, were it let
        finally:
            inside[0] -= 1

    monkeypatch.setattr(model, "embed_batches", counting)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda h: two_streams.encode_batch(h, batch_size=8), [uneven[::2], uneven[1::2]] * 2))
    assert most[0] == 1


# --- the cache --------------------------------------------------------------------------------

@pytest.mark.slow
def test_second_load_reads_the_cache(ov_encoder, cache: Path, texts) -> None:
    """A second load converts nothing (entry untouched), gives the same vectors, and runs on torch_threads threads."""
    from embedfleet.encode.openvino import OpenVINOEncoder

    before = _entry_state(ov_encoder.entry)
    again = OpenVINOEncoder(Settings(device="cpu", openvino_cache=str(cache), torch_threads=1), "bf16")
    assert not again.converted and again.entry == ov_encoder.entry
    assert _entry_state(again.entry) == before
    assert _entries(cache) == [ov_encoder.entry.name]  # no temporaries left behind
    assert again._model.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    # The same vectors; not to the last bit: on 2 threads the default encoder's 2 streams halve
    # this one batch, and bf16 results move with the padding.
    assert (again.encode_batch(texts[:8]) * ov_encoder.encode_batch(texts[:8])).sum(axis=1).min() >= 0.9999


def _cpus_allowed(status: Path) -> str:
    """The CPUs a process or thread may run on, as its /proc status file lists them."""
    return next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("Cpus_allowed_list"))


def _thread_masks_while(work: Callable[[], object]) -> tuple[set[str], int]:
    """Every CPU mask this process's threads showed while work ran, read every few ms, and
    how many times they were read."""
    masks: set[str] = set()
    samples = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal samples
        while not done.is_set():
            for task in os.listdir("/proc/self/task"):
                try:
                    masks.add(_cpus_allowed(Path(f"/proc/self/task/{task}/status")))
                except (OSError, StopIteration):  # the thread ended meanwhile
                    pass
            samples += 1
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        work()
    finally:
        done.set()
        watcher.join()
    return masks, samples


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning cannot narrow a one-CPU process")
def test_threads_are_left_to_the_scheduler(cache: Path, one_stream) -> None:
    """No OpenVINO thread is pinned while it infers, on one thread or two: OpenVINO's pinning
    (its default) counts cores from the first in every process alike, so `embedfleet worker`'s
    processes of one thread each all ran on core 0 (2 x 1 thread measured 0.69x one process of
    2 threads; 1.20x unpinned: the bench's layout section). A pinned thread shows a one-CPU
    mask for as long as it infers (this test fails with ENABLE_CPU_PINNING on)."""
    from embedfleet.encode.openvino import OpenVINOEncoder

    one_thread = OpenVINOEncoder(Settings(device="cpu", openvino_cache=str(cache), torch_threads=1), "bf16")
    process_mask = _cpus_allowed(Path("/proc/self/status"))
    for encoder in (one_thread, one_stream):
        masks, samples = _thread_masks_while(lambda e=encoder: e.encode_batch(["a few words of a commit title"] * 1500))
        assert samples >= 20, samples  # the encode was watched, not over before the first look
        assert masks == {process_mask}, (encoder.threads, masks)


def _damage(entry: Path, how: str) -> None:
    weights = entry / "model.bin"
    if how == "truncated weights":
        with weights.open("r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    elif how == "changed weights":
        with weights.open("r+b") as f:
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif how == "no meta":
        (entry / "meta.json").unlink()
    elif how == "bad meta":
        (entry / "meta.json").write_text('{"format": 1, "verd')
    elif how == "no tokenizer":
        shutil.rmtree(entry / "tokenizer")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated weights", "changed weights", "no meta", "bad meta", "no tokenizer"])
def test_a_damaged_entry_is_not_read(ov_encoder, tmp_path: Path, how: str) -> None:
    """A partial or damaged entry is not taken for a whole one."""
    from embedfleet.encode.openvino import read_entry

    copy = tmp_path / ov_encoder.entry.name
    shutil.copytree(ov_encoder.entry, copy)
    assert read_entry(copy) is not None
    _damage(copy, how)
    assert read_entry(copy) is None


@pytest.mark.slow
def test_a_damaged_entry_is_rebuilt(ov_encoder, tmp_path: Path, texts, caplog: pytest.LogCaptureFixture) -> None:
    """Half-written weights in the cache: the next load converts again and encodes as before."""
    from embedfleet.encode.openvino import OpenVINOEncoder

    shutil.copytree(ov_encoder.entry, tmp_path / ov_encoder.entry.name)
    _damage(tmp_path / ov_encoder.entry.name, "truncated weights")
    with caplog.at_level(logging.WARNING):
        rebuilt = OpenVINOEncoder(Settings(device="cpu", openvino_cache=str(tmp_path)), "bf16")
    assert rebuilt.converted and "damaged" in caplog.text
    assert _entries(tmp_path) == [ov_encoder.entry.name]  # the damaged copy is gone, nothing half-written left
    np.testing.assert_allclose(rebuilt.encode_batch(texts[:8]), ov_encoder.encode_batch(texts[:8]), atol=1e-6)


@pytest.mark.slow
def test_a_failed_quality_check_falls_back_and_is_remembered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A conversion under the cosine floor loads torch with a warning, and later starts neither convert nor check."""
    pytest.importorskip("openvino")
    from embedfleet.encode import openvino as openvino_encoder

    monkeypatch.setattr(openvino_encoder, "MIN_COSINE", 1.01)  # a floor no conversion reaches
    settings = Settings(device="cpu", precision="bf16", backend="openvino", openvino_cache=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        first = load_encoder(settings)
    assert isinstance(first, SentenceTransformerEncoder) and "encoding with torch instead" in caplog.text
    (name,) = _entries(tmp_path)
    entry = tmp_path / name
    assert json.loads((entry / "meta.json").read_text())["verdict"] == "rejected"
    before = _entry_state(entry)
    with pytest.raises(openvino_encoder.QualityRejected, match="verdict kept"):
        openvino_encoder.OpenVINOEncoder(settings, "bf16")
    assert _entry_state(entry) == before


@pytest.mark.slow
def test_two_processes_starting_on_a_cold_cache_convert_once(tmp_path: Path) -> None:
    """Two processes loading at once on an empty cache: one converts, the other waits and reads its entry."""
    pytest.importorskip("openvino")
    script = textwrap.dedent(f"""
        from embedfleet.settings import Settings
        from embedfleet.encode.openvino import OpenVINOEncoder
        encoder = OpenVINOEncoder(Settings(device="cpu", openvino_cache={str(tmp_path)!r}, torch_threads=1), "bf16")
        print("converted" if encoder.converted else "cached", encoder.encode_batch(["one line"]).shape)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    processes = [subprocess.Popen([str(BIN / "python"), "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    assert sorted(out.split()[0] for out, _ in outputs) == ["cached", "converted"], outputs
    (entry,) = _entries(tmp_path)
    from embedfleet.encode.openvino import read_entry

    assert read_entry(tmp_path / entry) is not None


def test_file_digests_hash_a_file_again_only_when_it_changed(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A start reads the model's digests from the cache root instead of hashing 180 MB again;
    a file changed in place (same size) is hashed again, and so is one the memo got wrong."""
    import hashlib

    from embedfleet.encode import openvino as ov

    model = tmp_path / "model"
    model.mkdir()
    (model / "weights").write_bytes(b"a" * 1000)
    (model / "config.json").write_text("{}")
    hashed: list[str] = []
    real = ov._sha256
    monkeypatch.setattr(ov, "_sha256", lambda path: hashed.append(path.name) or real(path))

    first = ov.FileDigests(tmp_path)
    key = ov.entry_key(model, "bf16", first)
    first.save()
    assert sorted(hashed) == ["config.json", "weights"]
    assert ov.entry_key(model, "bf16", ov.FileDigests(tmp_path)) == key
    assert len(hashed) == 2  # the second start hashed nothing
    assert ov.entry_key(model, "bf16") == key  # nor does the memo change the key
    hashed.clear()

    os.utime(model / "weights", ns=(0, 1))  # as an edit in place that keeps the size would
    (model / "weights").write_bytes(b"b" * 1000)
    again = ov.FileDigests(tmp_path)
    assert ov.entry_key(model, "bf16", again) != key
    assert hashed == ["weights"]
    assert again.sha256(model / "weights") == hashlib.sha256(b"b" * 1000).hexdigest()

    (tmp_path / ov.FileDigests.FILE).write_text("[not, json")  # damaged: ignored, hashed as before
    assert ov.entry_key(model, "bf16", ov.FileDigests(tmp_path)) == ov.entry_key(model, "bf16")
