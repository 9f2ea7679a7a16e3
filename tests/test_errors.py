"""Storage's error types and the collection-name check that guards SQL and version keys."""

from __future__ import annotations

import pytest

from embedfleet.errors import JobEnded, LedgerError, SourceNotStored, check_collection_name


@pytest.mark.parametrize("name", ["", "1abc", "a b", "x;drop table vectors", "a" * 65, "naïve"])
def test_collection_names_are_checked(name: str) -> None:
    """Collection names outside the strict pattern never reach SQL."""
    with pytest.raises(LedgerError, match="invalid collection name"):
        check_collection_name(name)


@pytest.mark.parametrize("name", ["c7\n", "c7__v2", "a__b", "c7__", "7c", ""])
def test_names_that_collide_with_version_keys_or_end_in_newline_are_refused(name: str) -> None:
    """Names match whole (no trailing newline) and may not contain '__', the version key separator."""
    with pytest.raises(LedgerError, match="invalid collection name"):
        check_collection_name(name)
    assert check_collection_name("c7_v2-x") == "c7_v2-x"


@pytest.mark.parametrize("name", ["c", "C", "docs", "my-docs_2", "a" * 64, "a_b-c_d"])
def test_good_names_pass_unchanged(name: str) -> None:
    """A letter then up to 63 letters, digits, '_' or '-' is accepted and returned as given."""
    assert check_collection_name(name) == name


def test_refusals_say_why_on_one_line() -> None:
    """The message names the bad value and the rule, on one line (what the CLI prints)."""
    with pytest.raises(LedgerError) as bad:
        check_collection_name("bad name")
    assert str(bad.value) == ("invalid collection name 'bad name': use a letter, then up to 63 letters, "
                              "digits, '_' or '-'")
    with pytest.raises(LedgerError) as reserved:
        check_collection_name("c7__v2")
    assert "'__' is reserved" in str(reserved.value) and "\n" not in str(reserved.value)


def test_a_name_fits_the_schema_with_room_for_a_version_suffix() -> None:
    """The longest accepted name fits collections.name (64) and its version keys fit versions.key (80)."""
    from embedfleet.store.collections import version_key
    from embedfleet.store.schema import collections, versions

    longest = check_collection_name("a" * 64)
    assert len(longest) <= collections.c.name.type.length
    assert len(version_key(longest, 99_999)) <= versions.c.key.type.length


def test_error_types_sit_where_their_callers_catch_them() -> None:
    """JobEnded is a LedgerError (commands report both alike); SourceNotStored is a TimeoutError,
    which the workers' retry policy treats as transient, so the collector retries it."""
    from embedfleet.chunks.isolation import is_transient

    assert issubclass(JobEnded, LedgerError)
    assert issubclass(SourceNotStored, TimeoutError) and not issubclass(SourceNotStored, LedgerError)
    assert is_transient(SourceNotStored("waiting for the first record"))
    assert not is_transient(LedgerError("no job"))
