"""The real model behind the encoder API."""

from __future__ import annotations

import numpy as np
import pytest

from embedfleet.encode.encoder import EncoderConfigError, SentenceTransformerEncoder, encode_one, load_encoder
from embedfleet.settings import Settings
from tests.conftest import SAMPLE, commit_text, read_records


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [commit_text(r) for r in read_records(SAMPLE)[:64]]


@pytest.fixture(scope="module")
def fp32_encoder() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(Settings(precision="fp32", device="cpu"))


def test_shape_and_unit_norm(fp32_encoder, texts) -> None:
    """A batch gives (N, 384) float32 rows of unit length."""
    matrix = fp32_encoder.encode_batch(texts)
    assert matrix.shape == (len(texts), 384)
    assert matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)


def test_deterministic(fp32_encoder, texts) -> None:
    """The same texts give the same vectors twice."""
    np.testing.assert_array_equal(fp32_encoder.encode_batch(texts[:16]), fp32_encoder.encode_batch(texts[:16]))


def test_batch_equals_single(fp32_encoder, texts) -> None:
    """The single-text API gives the batch's vector within 1e-5 in fp32, padding or not."""
    batch = fp32_encoder.encode_batch(texts[:12])
    for i, text in enumerate(texts[:12]):
        np.testing.assert_allclose(encode_one(fp32_encoder, text), batch[i], atol=1e-5)


def test_empty_input(fp32_encoder) -> None:
    """No texts give an empty (0, 384) matrix, not an error."""
    assert fp32_encoder.encode_batch([]).shape == (0, 384)


@pytest.mark.slow
def test_matches_plain_sentence_transformers(fp32_encoder, texts, reference_model) -> None:
    """fp32 vectors are those of a direct SentenceTransformer.encode."""
    expected = reference_model.encode(texts, batch_size=32, normalize_embeddings=True)
    np.testing.assert_allclose(fp32_encoder.encode_batch(texts), expected, atol=1e-5)


@pytest.mark.slow
def test_default_precision_keeps_quality(fp32_encoder, texts) -> None:
    """The default (auto) precision stays at cosine >= 0.999 to fp32 for every record."""
    auto = SentenceTransformerEncoder(Settings(device="cpu"))
    cosine = (auto.encode_batch(texts) * fp32_encoder.encode_batch(texts)).sum(axis=1)
    assert cosine.min() >= 0.999, (auto.precision, cosine.min())


def test_encoder_setting_swaps_backend() -> None:
    """EMBEDFLEET_ENCODER=module:Class loads that class with the settings."""
    encoder = load_encoder(Settings(encoder="tests.encode.fake_encoders:HashEncoder"))
    assert encoder.dimension == 8
    assert encoder.encode_batch(["a", "b"]).shape == (2, 8)


def test_bad_encoder_setting_is_explained() -> None:
    """An EMBEDFLEET_ENCODER without ':Class' fails with a message saying the form."""
    with pytest.raises(EncoderConfigError, match="module:Class"):
        load_encoder(Settings(encoder="tests.encode.fake_encoders"))
    with pytest.raises(EncoderConfigError, match="cannot be imported"):
        load_encoder(Settings(encoder="tests.encode.no_such_module:X"))


@pytest.mark.slow
def test_each_forward_pass_is_reported(fp32_encoder, texts) -> None:
    """on_batch hears every batch as it is encoded (the embedded run's progress moves within a chunk)."""
    heard: list[int] = []
    fp32_encoder.on_batch = heard.append
    try:
        fp32_encoder.encode_batch(texts, batch_size=16)
    finally:
        fp32_encoder.on_batch = None
    assert len(heard) >= 4 and sum(heard) == len(texts)
