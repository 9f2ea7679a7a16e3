"""Settings: every field from EMBEDFLEET_<NAME>, bad values refused with the field named, and the
process-wide current settings (get_settings / set_settings)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from embedfleet.settings import DEFAULT_MODEL, Settings, get_settings, set_settings


def test_every_field_reads_its_embedfleet_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """EMBEDFLEET_<NAME> (any case of the name) sets the field, converted to its type."""
    monkeypatch.setenv("EMBEDFLEET_DATABASE_URL", "postgresql://u@db/x")
    monkeypatch.setenv("EMBEDFLEET_CHUNK_SIZE", "64")
    monkeypatch.setenv("EMBEDFLEET_CHUNK_TIME_LIMIT", "12.5")
    monkeypatch.setenv("embedfleet_device", "cpu")
    settings = Settings()
    assert settings.database_url == "postgresql://u@db/x"
    assert settings.chunk_size == 64
    assert settings.chunk_time_limit == 12.5
    assert settings.device == "cpu"


def test_unprefixed_variables_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare DATABASE_URL or CHUNK_SIZE (another program's) does not change our settings."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://other/app")
    monkeypatch.setenv("CHUNK_SIZE", "3")
    settings = Settings()
    assert settings.database_url == "sqlite:///embedfleet.db"
    assert settings.chunk_size == 256


def test_other_embedfleet_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables with our prefix that are not settings (EMBEDFLEET_TEST_REDIS_URL, EMBEDFLEET_REQUIRE_SERVICES)
    do not make Settings() fail."""
    monkeypatch.setenv("EMBEDFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/8")
    monkeypatch.setenv("EMBEDFLEET_REQUIRE_SERVICES", "1")
    assert Settings().chunk_size == 256


def test_explicit_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings(field=...) (what CLI flags build) beats EMBEDFLEET_<FIELD>."""
    monkeypatch.setenv("EMBEDFLEET_CHUNK_SIZE", "64")
    assert Settings(chunk_size=8).chunk_size == 8


@pytest.mark.parametrize(("variable", "value"), [
    ("EMBEDFLEET_DEVICE", "gpu"),
    ("EMBEDFLEET_PRECISION", "fp8"),
    ("EMBEDFLEET_CHUNK_SIZE", "lots"),
    ("EMBEDFLEET_CHUNK_SIZE", "0"),
    ("EMBEDFLEET_CHUNK_SIZE", "16385"),  # past MAX_CHUNK_SIZE: a chunk's ids must bind in one statement
    ("EMBEDFLEET_HEARTBEAT_SECONDS", "soon"),
    ("EMBEDFLEET_VISIBILITY_TIMEOUT", "1.5"),
])
def test_bad_values_are_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    """A value of the wrong type or outside a choice is a ValidationError that names the field."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    [error] = caught.value.errors()
    assert error["loc"] == (variable.removeprefix("EMBEDFLEET_").lower(),)


def test_choices_accept_their_documented_values() -> None:
    """device auto/cpu/cuda and precision auto/fp32/bf16/fp16 are all accepted."""
    for device in ("auto", "cpu", "cuda"):
        assert Settings(device=device).device == device
    for precision in ("auto", "fp32", "bf16", "fp16"):
        assert Settings(precision=precision).precision == precision


def test_defaults_need_no_server_and_no_download() -> None:
    """Out of the box: SQLite in the working directory, the packaged model, sentence-transformers."""
    settings = Settings()
    assert settings.database_url.startswith("sqlite:///")
    assert settings.model == DEFAULT_MODEL
    assert settings.encoder == ""
    assert settings.flower_user == settings.flower_password == ""


def test_default_liveness_timings_are_consistent() -> None:
    """The failure model's timings, as shipped: a node is dead after several missed beats, its run
    of beats survives one late beat (streak gap = dead_after / 2 > one interval), the reconciler
    checks well within a lease, and Redis re-delivers only after a full chunk's time limit."""
    s = Settings()
    assert s.dead_after_seconds >= 3 * s.heartbeat_seconds
    assert s.dead_after_seconds / 2 > s.heartbeat_seconds
    assert s.reconcile_every_seconds < s.lease_seconds
    assert s.visibility_timeout > s.chunk_time_limit + s.chunk_time_per_record * s.chunk_size
    assert s.crash_split_deliveries <= s.max_deliveries


def test_get_settings_reads_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_settings() returns one object for the process; a later environment change is not seen
    until set_settings(None) asks for a fresh read."""
    monkeypatch.setenv("EMBEDFLEET_CHUNK_SIZE", "64")
    first = get_settings()
    assert first.chunk_size == 64 and get_settings() is first
    monkeypatch.setenv("EMBEDFLEET_CHUNK_SIZE", "32")
    assert get_settings() is first
    set_settings(None)
    assert get_settings().chunk_size == 32


def test_set_settings_replaces_the_process_settings() -> None:
    """set_settings(s) makes s what every get_settings() caller sees (how CLI flags such as --db apply)."""
    chosen = Settings(database_url="sqlite:///elsewhere.db")
    set_settings(chosen)
    assert get_settings() is chosen


def test_a_bare_file_name_is_not_a_database_url_and_the_error_says_what_to_write() -> None:
    """`--db embedfleet.db` (EMBEDFLEET_DATABASE_URL) is refused with the sqlite:/// form to use; a
    broker URL without a scheme likewise."""
    import pydantic

    with pytest.raises(pydantic.ValidationError, match=r"a SQLite file is sqlite:///embedfleet.db"):
        Settings(database_url="embedfleet.db")
    with pytest.raises(pydantic.ValidationError, match=r"redis://host:6379/0"):
        Settings(broker_url="localhost:6379")
    assert Settings(database_url="sqlite:///embedfleet.db").database_url == "sqlite:///embedfleet.db"


def test_a_schema_of_its_own_travels_in_the_database_url() -> None:
    """EMBEDFLEET_DATABASE_SCHEMA puts search_path in a PostgreSQL URL once (kept options stay), refuses a
    bad name, and refuses SQLite."""
    import pydantic

    settings = Settings(database_url="postgresql://u@h/db", database_schema="ef")
    assert settings.database_url == "postgresql://u@h/db?options=-csearch_path%3Def%2Cpublic"
    again = Settings(database_url=settings.database_url, database_schema="ef")
    assert again.database_url == settings.database_url
    kept = Settings(database_url="postgresql://u@h/db?options=-cstatement_timeout%3D5000", database_schema="ef")
    assert "statement_timeout" in kept.database_url and "search_path" in kept.database_url
    with pytest.raises(pydantic.ValidationError):
        Settings(database_url="postgresql://u@h/db", database_schema="bad name")
    with pytest.raises(pydantic.ValidationError, match="database_schema is for PostgreSQL"):
        Settings(database_url="sqlite:///x.db", database_schema="ef")
    assert Settings(database_url="sqlite:///x.db").database_url == "sqlite:///x.db"
