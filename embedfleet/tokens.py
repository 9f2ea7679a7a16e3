"""Token estimates from text length: producers size chunks with them, and workers size
batches with them, neither loading a tokenizer."""

from __future__ import annotations

# WordPiece and BPE average about four characters a token on English text and code; the
# estimate only sizes chunks and batches, the worker's tokenizer does the real (truncating) count.
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str, window: int) -> int:
    """Tokens the model will read: special tokens included, never more than its window."""
    return min(window, len(text) // CHARS_PER_TOKEN + 2)


def is_truncated(text: str, window: int) -> bool:
    return len(text) // CHARS_PER_TOKEN + 2 > window
