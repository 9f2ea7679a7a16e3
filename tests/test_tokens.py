"""Token estimates from text length, with no tokenizer: what sizes chunks and batches."""

from __future__ import annotations

import pytest

from embedfleet.tokens import CHARS_PER_TOKEN, estimate_tokens, is_truncated


def test_estimate_tokens_is_quarter_length_plus_two_capped_at_window():
    """estimate_tokens is len//4 + 2 special tokens, never more than the window."""
    assert estimate_tokens("", 256) == 2
    assert estimate_tokens("abc", 256) == 2
    assert estimate_tokens("a" * 40, 256) == 12
    assert estimate_tokens("a" * 40, 10) == 10
    assert estimate_tokens("a" * 10_000, 256) == 256


def test_is_truncated_only_when_estimate_exceeds_window():
    """is_truncated is true exactly when len//4 + 2 exceeds the window."""
    assert not is_truncated("a" * 32, 10)  # 8 + 2 == 10: fits
    assert is_truncated("a" * 36, 10)  # 9 + 2 > 10
    assert not is_truncated("", 2)


@pytest.mark.parametrize("window", [2, 3, 10, 256, 512])
def test_truncation_and_the_cap_agree(window: int) -> None:
    """A text is truncated exactly when its uncapped estimate passes the window, and then its
    estimate is the window: the two functions never disagree about one text."""
    for length in range(0, window * CHARS_PER_TOKEN + 12):
        text = "x" * length
        uncapped = length // CHARS_PER_TOKEN + 2
        assert is_truncated(text, window) == (uncapped > window)
        assert estimate_tokens(text, window) == (window if is_truncated(text, window) else uncapped)


def test_estimate_counts_characters_not_bytes() -> None:
    """Multi-byte characters count once each: 40 'é' are estimated like 40 'e'."""
    assert estimate_tokens("é" * 40, 256) == estimate_tokens("e" * 40, 256) == 12
