"""The OpenVINO backend: the model's own transformer, pooling and normalisation converted once
to an OpenVINO model, cached on disk, and run in bf16 on CPUs that do bf16 well.

The output contract is SentenceTransformerEncoder's: the tokenizer sentence-transformers
configured (its window and truncation included, saved with the converted model), the
pooling and normalisation modules the model's modules.json lists (traced into the graph,
not re-implemented), the same length-sorted token-bounded batches, float32 unit rows.

A cache entry is one directory per model (a hash of its files and of the converting
libraries' versions) and precision, written in a temporary directory and renamed into place,
so workers converting at once never see half an entry; a lock file makes the processes of
one host wait for one conversion instead of each making its own. Its meta.json, written last, holds
the verdict of the quality check made at conversion: a rejected model falls back to torch at
every later start without converting or checking again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from ..settings import Settings
from ..tokens import estimate_tokens
from .encoder import model_path, normalise, silence_progress_bars, token_batches
from .window import WindowCutter

log = logging.getLogger(__name__)

# Vectors within this cosine of torch fp32 for every probe text, or the model stays on torch.
MIN_COSINE = 0.999
# Bumped when an entry's layout or the conversion changes: older entries are then ignored.
CACHE_FORMAT = 1
# The converting libraries: another version may trace the model differently.
CONVERTERS = ("openvino", "torch", "transformers", "sentence-transformers")
MODEL_FILE, WEIGHTS_FILE, META_FILE, TOKENIZER_DIR = "model.xml", "model.bin", "meta.json", "tokenizer"
# Half-written entries of a process killed mid-conversion are removed after this long.
STALE_TEMP_SECONDS = 24 * 3600

# Texts the quality check encodes with both runtimes: prose, code, paths, non-Latin text, a
# one-word text, and one past the 256-token window so truncation is checked too. Encoded in
# one padded batch, so the pooling's masking of padding is checked as well.
PROBE_TEXTS = (
    "Fix race condition in the result backend when the connection is lost",
    "def encode(texts: list[str]) -> np.ndarray:\n    return model.encode(texts, batch_size=32)",
    "celery/backends/redis.py\ncelery/app/task.py\nt/unit/backends/test_redis.py",
    "Die Arbeiter laden das Modell nach dem Fork und behalten es für die Lebensdauer des Prozesses.",
    "ワーカーはフォークの後にモデルを読み込みます。",
    "retry",
    "SELECT id, text FROM records WHERE job_id = :job ORDER BY position LIMIT 256",
    "A chunk taken too many times without finishing is split in two, down to the one record "
    "that kills its process, which becomes a dead letter instead of taking the fleet down. " * 12,
)


class QualityRejected(Exception):
    """The converted model's vectors are not within MIN_COSINE of torch fp32's: use torch."""


def cache_root(settings: Settings) -> Path:
    if settings.openvino_cache:
        return Path(settings.openvino_cache).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "embedfleet" / "openvino"


def model_directory(name: str) -> Path:
    """The model's files on disk: a directory as given, a hub name from the local cache (never
    downloaded: HF_HUB_OFFLINE), so the cache entry can be keyed on their content."""
    path = model_path(name)
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, local_files_only=True))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FileDigests:
    """Files' sha256, remembered in the cache root under each file's size, modification time
    (ns), inode and device: a start hashes again only the files that changed. Hashing the
    model's files and the entry's weights (about 180 MB) took 0.15 s of every start on 2 cores.

    The file is a cache of a cache: unreadable, it is ignored; unwritable, starts hash as
    before. Writers replace it whole (a rename), so a reader never sees half of it."""

    FILE = ".digests.json"

    def __init__(self, root: Path | None) -> None:
        self.path = root / self.FILE if root is not None else None
        self.known: dict[str, list[Any]] = {}
        self.changed = False
        if self.path is not None:
            try:
                loaded = json.loads(self.path.read_text())
                self.known = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                pass

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev]
        key = str(path.resolve())
        seen = self.known.get(key)
        if isinstance(seen, list) and seen[:4] == stamp and len(seen) == 5:
            return str(seen[4])
        digest = _sha256(path)
        self.known[key] = [*stamp, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        try:
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, prefix=f"{self.FILE}.", delete=False) as out:
                json.dump(self.known, out)
            os.chmod(out.name, 0o644)  # the cache root is shared by a fleet's users (see _build)
            os.replace(out.name, self.path)
            self.changed = False
        except OSError:
            pass


def entry_key(model_dir: Path, precision: str, digests: FileDigests | None = None) -> str:
    """`<model dir name>-<16 hex>-<precision>`: the hash covers every file of the model (its
    weights, tokenizer and module configs) and the converting libraries' versions."""
    digests = digests or FileDigests(None)
    digest = hashlib.sha256(f"format {CACHE_FORMAT}\n".encode())
    for package in CONVERTERS:
        try:
            digest.update(f"{package} {version(package)}\n".encode())
        except PackageNotFoundError:
            digest.update(f"{package} -\n".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file() and ".git" not in p.parts):
        digest.update(f"{path.relative_to(model_dir)} {digests.sha256(path)}\n".encode())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_dir.name)[:40] or "model"
    return f"{slug}-{digest.hexdigest()[:16]}-{precision}"


def read_entry(entry: Path, digests: FileDigests | None = None) -> dict[str, Any] | None:
    """The entry's meta when it is whole (meta.json readable, the model files there with the
    recorded sizes and weights hash); None when missing, partial or damaged."""
    digests = digests or FileDigests(None)
    try:
        meta: dict[str, Any] = json.loads((entry / META_FILE).read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("verdict") not in ("ok", "rejected"):
            return None
        for name, size in meta["sizes"].items():
            if (entry / name).stat().st_size != size:
                return None
        if digests.sha256(entry / WEIGHTS_FILE) != meta["weights_sha256"]:
            return None
        if not (entry / TOKENIZER_DIR / "tokenizer_config.json").is_file():
            return None
        return meta
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def discard(entry: Path) -> None:
    """Move a damaged entry aside (one atomic rename, so no reader sees half of it) and delete it."""
    trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        entry.rename(trash)
    except FileNotFoundError:
        return  # another process moved it first
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_temporaries(root: Path) -> None:
    now = time.time()
    for path in root.glob(".*"):
        try:
            if path.is_dir() and now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


class FastTokenizer:
    """The saved fast tokenizer (tokenizer.json) run by the `tokenizers` library itself, called
    as transformers' tokenizer is called here. The same Rust tokenizer transformers wraps, so
    the same ids; without transformers, whose import pulls in torch (about 1.5 s of every
    start) when torch is installed."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config = json.loads((directory / "tokenizer_config.json").read_text())
        pad = config.get("pad_token") or "[PAD]"
        pad = pad["content"] if isinstance(pad, dict) else str(pad)
        pad_id = self._tokenizer.token_to_id(pad)
        if pad_id is None:
            raise ValueError(f"the tokenizer has no pad token {pad!r}")
        # Padding to the batch's longest, set once; the window is set when it changes (once per
        # model), not per batch: encode_batch may run on two threads.
        self._tokenizer.enable_padding(pad_id=pad_id, pad_token=pad)
        # transformers' side to cut a text past the window: most models keep the head.
        self.truncation_side = str(config.get("truncation_side") or "right")
        self._window: tuple[int, str] | None = None

    def __call__(self, texts: list[str], padding: bool = True, truncation: str = "longest_first",
                 max_length: int = 512, return_tensors: str = "np") -> dict[str, np.ndarray]:
        if self._window != (max_length, truncation):
            self._tokenizer.enable_truncation(max_length=max_length, strategy=truncation,
                                              direction=self.truncation_side)
            self._window = (max_length, truncation)
        encodings = self._tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }


def load_tokenizer(directory: Path) -> Any:
    """FastTokenizer where the model saved a tokenizer.json (every fast tokenizer does),
    transformers' AutoTokenizer for the rest."""
    if (directory / "tokenizer.json").is_file() and (directory / "tokenizer_config.json").is_file():
        return FastTokenizer(directory)
    from transformers import AutoTokenizer

    silence_progress_bars()
    return AutoTokenizer.from_pretrained(str(directory))


class CompiledSentenceModel:
    """A cache entry's tokenizer and compiled model: raw (un-normalised) sentence embeddings
    of padded batches. Built in the process that runs it: OpenVINO's Core and thread pool
    do not survive a fork, so a pool child compiles its own (resident.py loads after fork).

    streams: batches inferred at once. One stream is the LATENCY hint, each batch on all the
    threads; several are the THROUGHPUT hint with NUM_STREAMS, each stream on its share of
    the threads (2 streams of 2 threads: one thread each). In `embedfleet run` on 2 cores,
    2 streams of one thread beat one batch on both threads by 0-6% (docs/benchmarks.md);
    encode_batch alone showed no consistent gain. One stream is the default: see `lock`."""

    def __init__(self, entry: Path, meta: dict[str, Any], precision: str, threads: int, streams: int = 1) -> None:
        import openvino as ov

        self.tokenizer = load_tokenizer(entry / TOKENIZER_DIR)
        self.max_tokens = int(meta["max_tokens"])
        self.cutter = WindowCutter.for_tokenizer(self.tokenizer, self.max_tokens)
        self.inputs: list[str] = list(meta["inputs"])
        core = ov.Core()
        config: dict[str, Any] = {
            # bf16 is the measured win (docs/benchmarks.md); f32 keeps fp32 exact where asked.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads,
            # OpenVINO pins its threads to cores by default, counting from the first core in
            # every process alike: `embedfleet worker`'s processes of one thread each all ran
            # on core 0 (2 x 1 thread: 0.69x one process of 2 threads; unpinned each process
            # 2x faster). The kernel's scheduler spreads them, and in the embedded run (one
            # process) pinning was measured to give nothing (docs/benchmarks.md).
            "ENABLE_CPU_PINNING": False,
        }
        if streams > 1:
            config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=streams)
        else:
            config.update(PERFORMANCE_HINT="LATENCY")  # one request at a time, on all the threads
        self.compiled = core.compile_model(core.read_model(str(entry / MODEL_FILE)), "CPU", config)
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        # One caller at a time. Two threads inferring at once (the embedded run's two pool
        # threads) hung both inside start_async, in the input tensors' update, with 2
        # streams: every batch has a new sequence length, each request re-specialises the
        # model for it, and concurrent specialisations can deadlock the CPU plugin's thread
        # pool (reported with dynamic shapes: ultralytics/ultralytics#25923). Holding this
        # for a whole encode_batch keeps one request per stream in flight at most.
        self.lock = threading.Lock()

    def features(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        # The call sentence-transformers makes for text (base/modules/transformer.py): pad to
        # the batch's longest, truncate to the window the saved tokenizer carries.
        features = self.tokenizer(list(texts), padding=True, truncation="longest_first", max_length=self.max_tokens,
                                  return_tensors="np")
        return {name: np.asarray(features[name], dtype=np.int64) for name in self.inputs}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One batch, inferred now."""
        with self.lock:
            (vectors,) = self.embed_batches([texts])
        return vectors

    def embed_batches(self, batches: Sequence[Sequence[str]]) -> Iterator[np.ndarray]:
        """Each batch's embeddings, in the order given. Up to `streams` batches infer at once,
        and the next batch is tokenized while they do; the oldest is waited for first, so
        results come back in order, on the calling thread. Callers hold `lock` (one caller
        at a time); the requests are made per call all the same, so none is shared."""
        requests = [self.compiled.create_infer_request() for _ in range(max(1, min(self.streams, len(batches))))]
        in_flight: deque[Any] = deque()
        try:
            for index, texts in enumerate(batches):
                features = self.features(texts)
                if len(in_flight) == len(requests):
                    yield self._result(in_flight.popleft())
                request = requests[index % len(requests)]  # the one just waited for, once all are busy
                request.start_async(features)
                in_flight.append(request)
            while in_flight:
                yield self._result(in_flight.popleft())
        finally:
            for request in in_flight:  # the caller stopped early (an error): no request left running
                request.wait()

    @staticmethod
    def _result(request: Any) -> np.ndarray:
        request.wait()
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)  # a copy: the request is reused


def _traceable(model: Any, inputs: list[str]) -> Any:
    """The SentenceTransformer's transformer and every module after it (Pooling, Dense,
    Normalize: whatever modules.json lists) as one module of tensors in, embedding out."""
    import torch

    class SentenceHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = model[0].auto_model
            self.rest = torch.nn.ModuleList(list(model)[1:])

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]
            features = {"token_embeddings": hidden, "attention_mask": attention_mask}
            for module in self.rest:
                features = module(features)
            return features["sentence_embedding"]

    unknown = set(inputs) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown:
        raise ValueError(f"the OpenVINO backend does not know the model inputs {sorted(unknown)}")
    return SentenceHead().eval()


def convert(model_dir: Path, target: Path, precision: str, threads: int) -> dict[str, Any]:
    """Convert the model into target (model, tokenizer, meta) and check its vectors against
    torch fp32 on PROBE_TEXTS. Returns the meta, verdict included; writes meta.json last."""
    import torch
    from transformers.utils import logging as transformers_logging

    silence_progress_bars()
    torch.set_num_threads(threads)
    # Tracing the model makes transformers print a config remark (`loss_type=None ...`) on the
    # user's terminal, in the middle of `run`'s own lines: errors only while converting.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            # ... and deprecation remarks of transformers' own internals (FutureWarning),
            # which a user can do nothing about.
            warnings.simplefilter("ignore", FutureWarning)
            return _convert(model_dir, target, precision, threads)
    finally:
        transformers_logging.set_verbosity(verbosity)


def _convert(model_dir: Path, target: Path, precision: str, threads: int) -> dict[str, Any]:
    import openvino as ov
    import torch
    from sentence_transformers import SentenceTransformer

    # fp32 on purpose: the conversion's source and the quality check's reference.
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    tokenizer = model.tokenizer
    inputs = [name for name in tokenizer.model_input_names if name in ("input_ids", "attention_mask", "token_type_ids")]
    example = tokenizer(list(PROBE_TEXTS[:2]), padding=True, truncation="longest_first", return_tensors="pt")
    with torch.inference_mode(), warnings.catch_warnings():
        # The tracer's warnings name branches on shapes that hold for every batch (a mask as
        # long as the hidden states): noise on a user's terminal.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Batch and sequence length stay dynamic ([?, ?]): one compiled model serves every batch.
        converted = ov.convert_model(_traceable(model, inputs), example_input={k: example[k] for k in inputs})
        reference = model.encode(list(PROBE_TEXTS), batch_size=len(PROBE_TEXTS), normalize_embeddings=True,
                                 show_progress_bar=False)
    # Full fp32 weights on disk: the precision is the compile's choice, not the file's.
    ov.save_model(converted, str(target / MODEL_FILE), compress_to_fp16=False)
    tokenizer.save_pretrained(str(target / TOKENIZER_DIR))
    meta: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "model_dir": str(model_dir),
        "precision": precision,
        "inputs": inputs,
        "dimension": int(reference.shape[1]),
        "max_tokens": int(model.max_seq_length or 512),
        "sizes": {name: (target / name).stat().st_size for name in (MODEL_FILE, WEIGHTS_FILE)},
        "weights_sha256": _sha256(target / WEIGHTS_FILE),
    }
    candidate = normalise(CompiledSentenceModel(target, meta, precision, threads).embed(PROBE_TEXTS))
    min_cosine = float((candidate * np.asarray(reference, dtype=np.float32)).sum(axis=1).min())
    meta.update(min_cosine=round(min_cosine, 6), verdict="ok" if min_cosine >= MIN_COSINE else "rejected")
    (target / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def _build(entry: Path, model_dir: Path, precision: str, threads: int) -> dict[str, Any]:
    """Convert into a temporary directory beside the entry and rename it into place: a reader
    sees the whole entry or none (a rename within one file system is atomic)."""
    temporary = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        started = time.perf_counter()
        meta = convert(model_dir, temporary, precision, threads)
        log.info("converted %s to OpenVINO %s in %.1f s (min cosine to torch fp32 %.6f on the probe texts: %s)",
                 model_dir, precision, time.perf_counter() - started, meta["min_cosine"], meta["verdict"])
        temporary.chmod(0o755)  # mkdtemp's 0700 would keep the cache from a fleet's other users
        try:
            temporary.rename(entry)
        except OSError:
            # Another process (one the lock does not reach: another host on a shared
            # directory) renamed its own conversion into place first: use that one.
            winner = read_entry(entry)
            if winner is None:
                raise
            meta = winner
        return meta
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def cached_entry(root: Path, model_dir: Path, precision: str, threads: int) -> tuple[Path, dict[str, Any], bool]:
    """(entry, meta, whether this call converted): the whole entry if there is one, else a new
    one. A damaged entry is rebuilt."""
    digests = FileDigests(root if root.is_dir() else None)
    entry = root / entry_key(model_dir, precision, digests)
    meta = read_entry(entry, digests)
    digests.save()
    if meta is not None:
        return entry, meta, False
    root.mkdir(parents=True, exist_ok=True)
    # One conversion of an entry at a time: the pool processes of a worker starting on a cold
    # cache wait for the first one's instead of each converting. The rename in _build keeps
    # the entry whole without the lock too.
    with _locked(root / f".{entry.name}.lock"):
        meta = read_entry(entry)
        if meta is not None:
            return entry, meta, False
        if entry.exists():
            log.warning("OpenVINO cache entry %s is incomplete or damaged: converting again", entry)
            discard(entry)
        _remove_stale_temporaries(root)
        return entry, _build(entry, model_dir, precision, threads), True


def streams_for(threads: int, setting: int) -> int:
    """OpenVINO streams of a process with this many threads: the setting
    (EMBEDFLEET_OPENVINO_STREAMS, 1 by default) when it is not 0, else 2 where there are 2
    threads or more and 1 on one thread. 0 does not mean one per thread on larger machines:
    a chunk of 256 texts or 16,384 tokens makes as few as 4 batches, and a stream without a
    batch idles its threads. Never more streams than threads."""
    streams = setting or (2 if threads >= 2 else 1)
    return max(1, min(streams, threads))


def spread(batches: list[list[int]], streams: int) -> list[list[int]]:
    """Fewer batches than streams (a short chunk, a query): the largest are halved until each
    stream has one, so all the threads work. Otherwise the batches as they are."""
    batches = list(batches)
    while len(batches) < streams:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        batch = batches[largest]
        if len(batch) < 2:
            break
        half = (len(batch) + 1) // 2
        batches[largest:largest + 1] = [batch[:half], batch[half:]]
    return batches


class OpenVINOEncoder:
    """The built-in encoder's model run by OpenVINO: SentenceTransformerEncoder's contract."""

    on_batch: Callable[[int], None] | None = None
    device = "cpu"
    backend = "openvino"

    def __init__(self, settings: Settings, precision: str) -> None:
        started = time.perf_counter()
        from .cpus import available_cpus

        self.model_name = settings.model
        self.precision = precision
        self.threads = settings.torch_threads or available_cpus()
        self.streams = streams_for(self.threads, settings.openvino_streams)
        self.entry, meta, self.converted = cached_entry(cache_root(settings), model_directory(settings.model),
                                                        precision, self.threads)
        if meta["verdict"] != "ok":
            raise QualityRejected(
                f"OpenVINO {precision} vectors of {settings.model} reach only cosine {meta['min_cosine']} to torch "
                f"fp32 (< {MIN_COSINE}; verdict kept in {self.entry})"
            )
        self._meta = meta
        self._model = CompiledSentenceModel(self.entry, meta, precision, self.threads, self.streams)
        self._pid = os.getpid()
        self._inherited: list[CompiledSentenceModel] = []
        self.dimension = int(meta["dimension"])
        self.max_tokens = int(meta["max_tokens"])
        self.batch_size = settings.batch_size
        self.batch_tokens = settings.batch_tokens or 4096
        log.info(
            "loaded %s on cpu with OpenVINO in %s in %.1f s (%s; dim %d, window %d tokens, %d threads in %d "
            "streams, batches of <= %d texts / %d tokens)",
            self.model_name, precision, time.perf_counter() - started, "converted" if self.converted else "cached",
            self.dimension, self.max_tokens, self.threads, self._model.streams, self.batch_size, self.batch_tokens,
        )

    @property
    def tokenizer(self) -> Any:
        """The tokenizer sentence-transformers configured, as saved with the converted model."""
        return self._model.tokenizer

    def _compiled(self) -> CompiledSentenceModel:
        # Loaded before a fork and used after it (a pool created after the model was loaded):
        # the parent's Core and its threads are not in this process, so compile again here.
        # The inherited model is kept, never freed: its destructor waits for the parent's
        # threads, which a child does not have, and hangs (measured). Best effort only: a fork
        # of a process whose OpenVINO (or torch) threads are running can leave the child stuck
        # on a lock one of them held (seen once under load), so fleet workers load after fork.
        if os.getpid() != self._pid:
            self._inherited.append(self._model)
            self._model = CompiledSentenceModel(self.entry, self._meta, self.precision, self.threads,
                                                self.streams)
            self._pid = os.getpid()
        return self._model

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self._compiled()
        texts = model.cutter.cut(texts)
        lengths = [estimate_tokens(t, self.max_tokens) for t in texts]
        batches = spread(token_batches(lengths, batch_size or self.batch_size, self.batch_tokens), model.streams)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        with model.lock:  # see CompiledSentenceModel: one caller at a time
            for batch, vectors in zip(batches, model.embed_batches([[texts[i] for i in b] for b in batches]),
                                      strict=True):
                out[batch] = vectors
                if self.on_batch is not None:
                    self.on_batch(len(batch))
        return normalise(out)
