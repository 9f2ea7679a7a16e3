"""Operations commands: registered on the `embedfleet` group by importing this module."""

from __future__ import annotations
