"""docs/settings.md is generated from the Settings fields and must not go stale."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic.fields import FieldInfo

from embedfleet.settings import Settings
from embedfleet.settings_doc import env_var, field_row, settings_markdown, type_name
from tests.conftest import REPO, assert_imports_no_model

SETTINGS_PAGE = REPO / "docs" / "settings.md"


def test_the_committed_settings_page_is_the_generated_one() -> None:
    """A field added, a default changed or a description reworded without regenerating fails here."""
    committed = SETTINGS_PAGE.read_text(encoding="utf-8")
    assert committed == settings_markdown(), "docs/settings.md is stale: run `make docs`"


def test_every_field_has_a_description_and_a_row() -> None:
    """Each field is described (the page is its only reference) and appears once, as its env var."""
    page = settings_markdown()
    for name, field in Settings.model_fields.items():
        assert field.description and len(field.description) > 20, f"Settings.{name} needs a description"
        assert page.count(f"| `{env_var(name)}` |") == 1


def test_a_row_spells_out_choices_and_defaults() -> None:
    """Literal choices are listed with escaped pipes (one table cell), an empty default is said so."""
    assert type_name(Literal["auto", "cpu", "cuda"]) == "`auto` \\| `cpu` \\| `cuda`"
    assert type_name(int) == "integer"
    row = field_row("encoder", FieldInfo(annotation=str, default="", description="a | b\n c"))
    assert row == '| `EMBEDFLEET_ENCODER` | text | `""` (empty) | a \\| b c |'


def test_a_field_without_a_description_is_refused() -> None:
    """The generator names the field instead of writing an empty cell."""
    with pytest.raises(ValueError, match=r"Settings\.chunk_size has no Field\(description"):
        field_row("chunk_size", FieldInfo(annotation=int, default=256))


def test_the_generator_loads_no_model() -> None:
    """`make docs` runs on a host without torch: the generator imports only the settings."""
    assert_imports_no_model("embedfleet.settings_doc")
