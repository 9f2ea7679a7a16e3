"""The float32 vector codec: pack, unpack, rows."""

from __future__ import annotations

import numpy as np
import pytest

from embedfleet.store import codec


def test_codec_round_trip() -> None:
    """Vectors survive pack/unpack bit for bit; a wrong dimension is refused."""
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(codec.unpack(codec.pack(matrix), 4), matrix)
    assert [codec.unpack(b, 4)[0, 0] for b in codec.rows(codec.pack(matrix), 4)] == [0.0, 4.0, 8.0]
    with pytest.raises(ValueError):
        codec.unpack(codec.pack(matrix), 5)
