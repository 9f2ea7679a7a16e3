"""A long text cut to a prefix that still holds the model's whole window, so the tokenizer
reads kilobytes instead of megabytes, and the vector is exactly the full text's.

The model reads a text's first `window` tokens; the tokenizer, though, tokenizes the whole
text before it truncates. A 5 MB text took about 4 s and gigabytes of memory to be cut to
256 tokens. Cutting first is exact when the tokenizer splits words at spaces and normalises
each character on its own (BERT's and the usual whitespace / SentencePiece-style
pre-tokenizers): then the tokens of `text[:i]`, cut at a space, are the first tokens of
`text`. A prefix is used only when its own tokens, counted, fill the window; otherwise it
doubles, up to the whole text. Any other tokenizer gets every text whole, as before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# A text this many characters per window token long, or longer, is worth cutting: far
# above any language's average (4-6 characters a token), so a prefix of this length almost
# always holds the window at the first count.
CHARS_PER_WINDOW_TOKEN = 32

# Components under which a cut at a space is exact (see the module's docstring).
SPLIT_AT_SPACES = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Metaspace"})
PER_CHARACTER = frozenset({"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents", "Strip"})


def _types(component: dict[str, Any] | None, key: str) -> list[str]:
    """The component's type, or its members' types for a Sequence. A Metaspace that does not
    split (the whole text one piece for the model) counts as an unknown type."""
    if component is None:
        return []
    if component.get("type") == "Sequence":
        return [t for member in component.get(key, []) for t in _types(member, key)]
    if component.get("type") == "Metaspace" and not component.get("split", True):
        return ["Metaspace(split=false)"]
    return [str(component.get("type"))]


def cuts_exactly(backend: Any) -> bool:
    """Whether a `tokenizers.Tokenizer` splits at spaces and normalises per character, with
    no added token that reaches across a space (one holding whitespace, or one that strips
    the spaces beside it)."""
    config = json.loads(backend.to_str())
    splits = _types(config.get("pre_tokenizer"), "pretokenizers")
    normalizers = _types(config.get("normalizer"), "normalizers")
    if not splits or not all(t in SPLIT_AT_SPACES for t in splits) or not all(t in PER_CHARACTER for t in normalizers):
        return False
    # Metaspace splits at ASCII spaces only, so a tab or newline before the cut belongs to
    # the last word, and Strip would take it off the prefix alone.
    if "Metaspace" in splits and "Strip" in normalizers:
        return False
    return not any(token.get("lstrip") or token.get("rstrip") or any(c.isspace() for c in token.get("content", ""))
                   for token in config.get("added_tokens") or [])


class WindowCutter:
    """Cuts texts longer than the window could use. Every text is left whole for a `None`
    backend, one that does not cut exactly, or a tokenizer that truncates on the left (it
    keeps the text's end)."""

    def __init__(self, backend: Any | None, window: int, truncation_side: str = "right") -> None:
        self.window = window
        self.min_chars = window * CHARS_PER_WINDOW_TOKEN
        self._counter = None
        if backend is not None and truncation_side == "right" and cuts_exactly(backend):
            from tokenizers import Tokenizer

            # A copy: counting must see every token (no truncation, no padding), and the
            # encoder's own tokenizer keeps its settings.
            self._counter = Tokenizer.from_str(backend.to_str())
            self._counter.no_truncation()
            self._counter.no_padding()

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, window: int) -> WindowCutter:
        """The cutter for an encoder's tokenizer: a transformers fast tokenizer or our
        FastTokenizer (the `tokenizers.Tokenizer` inside either, and its truncation side)."""
        backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        return cls(backend, window, str(getattr(tokenizer, "truncation_side", "right")))

    def cut(self, texts: Sequence[str]) -> Sequence[str]:
        if self._counter is None or all(len(text) < self.min_chars for text in texts):
            return texts
        return [self.prefix(text) if len(text) >= self.min_chars else text for text in texts]

    def prefix(self, text: str) -> str:
        """A prefix cut at a space whose tokens fill the window, from min_chars on; the text
        itself when none does. A prefix short of the window grows by what its own tokens per
        character say it needs (at least double), and the search stops before counting more
        than half the text: a text of spaces, with almost no tokens, costs one short count
        before it is tokenized whole, not a count of every doubling."""
        assert self._counter is not None
        length = self.min_chars
        while length <= len(text) // 2:
            space = text.rfind(" ", 0, length)
            tokens = len(self._counter.encode(text[:space], add_special_tokens=False).ids) if space > 0 else 0
            if tokens >= self.window:
                return text[:space]
            length = max(2 * length, length * 3 * self.window // (2 * max(tokens, 1)))
        return text

