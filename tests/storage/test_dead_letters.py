"""Dead letters: storable letters, a failed chunk's letters, listing, resolving, fetching by id."""

from __future__ import annotations

from embedfleet.config.messages import DeadRecord
from embedfleet.storage.dead_letters import LETTER_ID_LENGTH, storable_letter


def test_storable_letter_escapes_nul_and_shortens_long_ids():
    """NUL in an id is written as \\x00, in a text removed; an over-long id is cut to the column with a
    marker; the message says so and keeps the original length; a clean letter is returned as is."""
    clean = DeadRecord("r1", 0, "t", "h", "E", "m")
    assert storable_letter(clean) is clean
    letter = storable_letter(DeadRecord("a\x00b", 1, "x\x00y", "h", "E\x00", "boom\x00"))
    assert (letter.record_id, letter.text, letter.error_type) == ("a\\x00b", "xy", "E")
    assert letter.message == ("[record id altered to fit storage: NUL written as \\x00; NUL removed from the text] "
                              "boom")
    long = storable_letter(DeadRecord("L" * 700, 2, "t", "h", "E", "m"))
    assert len(long.record_id) == LETTER_ID_LENGTH and long.record_id.endswith("...[700 chars]")
    assert long.message == "[record id altered to fit storage: shortened, it has 700 characters] m"
    text_only = storable_letter(DeadRecord("r", 3, "a\x00", "h", "E", "m"))
    assert text_only.message == "[letter altered to fit storage: NUL removed from the text] m"
