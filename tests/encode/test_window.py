"""Cutting long texts before the tokenizer: the model's tokens stay exactly the full text's."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE, WordLevel

from embedfleet.encode.encoder import SentenceTransformerEncoder, model_path
from embedfleet.encode.window import CHARS_PER_WINDOW_TOKEN, WindowCutter, cuts_exactly
from embedfleet.settings import Settings

WINDOW = 256


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The default model's tokenizer, truncating to its window as the encoders do."""
    loaded = Tokenizer.from_file(str(Path(model_path("all-MiniLM-L6-v2")) / "tokenizer.json"))
    loaded.no_padding()
    loaded.enable_truncation(max_length=WINDOW)
    return loaded


def _long_texts() -> list[str]:
    rng = random.Random(7)
    words = ["alpha", "Beta", "naïve", "café", "e\u0301", "日本語の", "テキスト", "🙂", "x" * 150, "--", "a.b,c;d",
             "\x01ctl", "tab\tsep", "line\nbreak", "nb\u00a0sp", "zero\u200bwidth", "ünïcödé", "$$$", "1234567890"]
    seps = [" ", "  ", " \t ", "\n", " \u3000 ", " \x1c "]
    texts = []
    for n in (2_000, 9_000, 40_000, 200_000):
        parts = []
        for _ in range(n):
            parts += [rng.choice(words), rng.choice(seps)]
        texts.append("".join(parts))
    # Few spaces: the first prefix holds too few tokens and must grow.
    texts.append(("y" * 90 + " ") * 2_000)
    # Spaces only far in: the cut waits for the first one that fills the window.
    texts.append("z" * 30_000 + " " + "word " * 5_000)
    return texts


def test_a_cut_text_gives_exactly_the_full_texts_tokens(tokenizer: Tokenizer) -> None:
    """Control characters, CJK, combining marks, emoji, over-long words, tabs, newlines and
    the separators Python and Rust disagree about (U+001C): the window's ids are equal."""
    cutter = WindowCutter(tokenizer, WINDOW)
    texts = _long_texts()
    cut = cutter.cut(texts)
    assert [len(c) for c in cut] != [len(t) for t in texts]  # some were cut
    for full, head in zip(texts, cut, strict=True):
        assert full.startswith(head)
        assert tokenizer.encode(head).ids == tokenizer.encode(full).ids


def test_the_cut_waits_for_a_space_and_for_a_full_window(tokenizer: Tokenizer) -> None:
    """Texts built so that a sloppier cut shows: words over 100 characters are one [UNK]
    token each (so a prefix holds few tokens and must grow), and a cut inside such a word
    would turn it into many word pieces instead of its one [UNK]."""
    window = 64
    small = Tokenizer.from_str(tokenizer.to_str())
    small.enable_truncation(max_length=window)
    unk_words = ("u" * 101 + " ") * 400
    rng = random.Random(5)
    spanning = ("u" * 101 + " ") * 10 + "".join(rng.choice("abcdefghij0123456789") for _ in range(5000)) + " " + unk_words
    cutter = WindowCutter(small, window)
    for full in (unk_words, spanning):
        head = cutter.cut([full])[0]
        assert len(head) < len(full) and full[len(head)] == " "
        assert small.encode(head).ids == small.encode(full).ids


def test_short_texts_and_texts_without_spaces_are_left_whole(tokenizer: Tokenizer) -> None:
    cutter = WindowCutter(tokenizer, WINDOW)
    short = ["a short text", "w " * (WINDOW * CHARS_PER_WINDOW_TOKEN // 2 - 1)]
    assert cutter.cut(short) is short
    blob = "q" * (WINDOW * CHARS_PER_WINDOW_TOKEN * 4)
    assert cutter.cut([blob, "x"]) == [blob, "x"]


def test_only_tokenizers_that_split_at_spaces_are_cut(tokenizer: Tokenizer) -> None:
    """BERT's tokenizer cuts; a byte-level BPE, a Metaspace that does not split and a
    normaliser that is not per character do not, and their texts stay whole."""
    assert cuts_exactly(tokenizer)
    byte_level = Tokenizer(BPE())
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel()
    no_split = Tokenizer(WordLevel({"a": 0}, unk_token="a"))
    no_split.pre_tokenizer = pre_tokenizers.Metaspace(split=False)
    replacing = Tokenizer(WordLevel({"a": 0}, unk_token="a"))
    replacing.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    replacing.normalizer = normalizers.Replace("  ", "_")
    sequence = Tokenizer(WordLevel({"a": 0}, unk_token="a"))
    sequence.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    sequence.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    assert [cuts_exactly(t) for t in (byte_level, no_split, replacing, sequence)] == [False, False, False, True]
    # Found by a red team: tokens that reach across the cut's space, and Strip under a
    # Metaspace (which splits at ASCII spaces only, so a newline before the cut would go).
    across_space = Tokenizer.from_str(tokenizer.to_str())
    across_space.add_tokens(["a" * 40 + " b"])
    strips_beside = Tokenizer(WordLevel({"a": 0, "<mask>": 1}, unk_token="a"))
    strips_beside.pre_tokenizer = pre_tokenizers.Metaspace()
    strips_beside.add_special_tokens([AddedToken("<mask>", lstrip=True)])
    stripped = Tokenizer(WordLevel({"a": 0}, unk_token="a"))
    stripped.pre_tokenizer = pre_tokenizers.Metaspace()
    stripped.normalizer = normalizers.Strip()
    assert [cuts_exactly(t) for t in (across_space, strips_beside, stripped)] == [False, False, False]
    long_text = "word " * (WINDOW * CHARS_PER_WINDOW_TOKEN)
    assert WindowCutter(byte_level, WINDOW).cut([long_text]) == [long_text]
    assert WindowCutter(None, WINDOW).cut([long_text]) == [long_text]


def test_a_text_of_spaces_is_counted_once_then_left_whole(tokenizer: Tokenizer) -> None:
    """No prefix of a text that is almost all spaces fills the window: the cutter must give
    up after one short count, not count every doubling before the whole text is tokenized."""
    counts: list[int] = []
    cutter = WindowCutter(tokenizer, WINDOW)
    real = cutter._counter
    assert real is not None

    class Counting:
        def encode(self, text: str, add_special_tokens: bool = True):  # type: ignore[no-untyped-def]
            counts.append(len(text))
            return real.encode(text, add_special_tokens=add_special_tokens)

    cutter._counter = Counting()
    spaces = "a" + " " * 2_000_000 + " tail words here"
    assert cutter.cut([spaces]) == [spaces]
    assert sum(counts) <= WINDOW * CHARS_PER_WINDOW_TOKEN, counts


def test_a_tokenizer_that_keeps_the_end_is_not_cut(tmp_path: Path) -> None:
    """A model whose tokenizer truncates on the left reads a long text's end: the cutter
    leaves its texts whole, and both backends' tokenizers keep the end as transformers does."""
    from transformers import AutoTokenizer

    from embedfleet.encode.openvino import FastTokenizer

    source = Path(model_path("all-MiniLM-L6-v2"))
    left = tmp_path / "left"
    left.mkdir()
    for item in source.iterdir():
        (left / item.name).symlink_to(item)
    config = json.loads((source / "tokenizer_config.json").read_text())
    (left / "tokenizer_config.json").unlink()
    (left / "tokenizer_config.json").write_text(json.dumps({**config, "truncation_side": "left"}))
    long_text = " ".join(["alpha", "beta", "gamma"] * 3000) + " " + " ".join(["search", "vector"] * 300)
    transformers_ids = AutoTokenizer.from_pretrained(str(left))([long_text], truncation=True, max_length=WINDOW)
    ours = FastTokenizer(left)
    assert ours.truncation_side == "left"
    assert WindowCutter.for_tokenizer(ours, WINDOW).cut([long_text]) == [long_text]
    got = ours([long_text], max_length=WINDOW)["input_ids"][0].tolist()
    assert got == transformers_ids["input_ids"][0]
    encoder = SentenceTransformerEncoder(Settings(model=str(left), precision="fp32", device="cpu"))
    assert encoder._cutter.cut([long_text]) == [long_text]


def test_the_encoder_embeds_a_huge_text_as_its_window() -> None:
    """The torch encoder hands sentence-transformers the cut text, not the 2 MB one, and
    its vector is bit for bit the vector of the text cut by hand well past the window."""
    encoder = SentenceTransformerEncoder(Settings(precision="fp32", device="cpu"))
    rng = random.Random(3)
    huge = " ".join(rng.choice(["search", "vector", "índex", "fleet", "日本"]) for _ in range(400_000))
    by_hand = huge[:20_000]
    model_encode = encoder._model.encode
    reached: list[int] = []

    def spy(texts, **kwargs):  # type: ignore[no-untyped-def]  # the real model, watched
        reached.extend(len(t) for t in texts)
        return model_encode(texts, **kwargs)

    encoder._model.encode = spy
    vectors = encoder.encode_batch([huge, by_hand, "short"])
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert max(reached) <= len(by_hand), reached  # without the cut, 2 MB reach the tokenizer
