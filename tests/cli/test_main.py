"""The `embedfleet` group's conventions, checked on the real commands: --version, every command's
--help (--json on the commands that print data, --db/--broker-url with their environment variables
on those that talk to a service), the exit codes, and that no command creates a database it only reads."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from embedfleet.cli import cli
from embedfleet.cli.errors import EXIT_CODES
from tests.conftest import embedfleet

# Every command, by what it does. A new command must be put in these sets, or the last test fails.
SERVERS = {"worker", "beat", "flower", "metrics"}  # long-running processes: nothing to print as JSON
DATABASE = {"run", "submit", "status", "cancel", "resume", "export", "jobs", "metrics", "collections",
            "delete-collection", "reindex", "migrate", "cutover", "rollback", "drop-version", "search",
            "dlq list", "dlq show", "dlq redrive", "worker", "beat"}
BROKER = {"submit", "status", "resume", "reindex", "migrate", "dlq redrive", "worker", "beat", "flower", "search"}
# bench makes its own database and broker (its --pg-url/--broker-url must not be the user's).
OWN_SERVICES = {"bench"}


def commands(group: click.Group = cli, prefix: str = "") -> dict[str, click.Command]:
    """Every command, loading the lazy ones (cli/main.py: LazyGroup)."""
    found: dict[str, click.Command] = {}
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            found.update(commands(command, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = command
    return found


def help_of(name: str) -> str:
    result = CliRunner().invoke(cli, [*name.split(), "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_version_is_the_package_version() -> None:
    """`embedfleet --version` prints the installed distribution's version, exit 0."""
    result = embedfleet("--version", cwd=Path("/tmp"))
    assert result.stdout.strip() == f"embedfleet {importlib.metadata.version('embedfleet')}"


def test_the_group_help_documents_the_exit_codes() -> None:
    """`embedfleet --help` ends with the exit codes 0-3, as errors.py defines them."""
    text = help_of("")
    assert "Exit codes:" in text and "--version" in text
    for code, what in EXIT_CODES.items():
        assert f"{code}  {what}" in text
    assert set(EXIT_CODES) == {0, 1, 2, 3}


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_follows_the_conventions(name: str) -> None:
    """Each command's --help: --json unless it is a server; --db and --broker-url with their env vars where it
    talks to the database or broker; --version nowhere but on the group (collection versions are
    --collection-version)."""
    text = help_of(name)
    flags = {o for p in commands()[name].params if isinstance(p, click.Option) and not p.hidden for o in p.opts}
    assert ("--json" in flags) == (name not in SERVERS), text
    assert ("--db" in flags) == (name in DATABASE), text
    assert ("--broker-url" in flags) == (name in BROKER or name in OWN_SERVICES), text
    if name in DATABASE:
        assert "[env var: EMBEDFLEET_DATABASE_URL]" in " ".join(text.split()), text
    if name in BROKER:
        assert "[env var: EMBEDFLEET_BROKER_URL]" in " ".join(text.split()), text
    assert "--version" not in flags
    for option in ("--chunk-size", "--batch-size", "--model"):
        if option in flags and name != "migrate":  # migrate's --model is the new model: never from the env
            assert "[env var: EMBEDFLEET_" in text.split(option, 1)[1].split("\n  -")[0], (name, option)


def test_every_command_is_classified() -> None:
    """The sets above name exactly the real commands: a new or renamed one must be classified before the
    convention test can pass for it (every command talks to a database, a broker or services of its own)."""
    assert set(commands()) == SERVERS | DATABASE | BROKER | OWN_SERVICES


@pytest.mark.parametrize("args", [
    ["status"],
    ["status", "--bogus"],
    ["run", "--collection", "c"],
    ["export", "--collection", "c", "--out", "x.npy", "--version", "2"],
    ["submit", "missing.jsonl", "--collection", "c"],
    ["run", "missing.jsonl", "--collection", "c"],
    ["submit", "-", "--collection", "c", "--strict"],
])
def test_a_usage_error_exits_2_and_creates_no_database(tmp_path: Path, args: list[str]) -> None:
    """Usage mistakes and an unreadable corpus: exit 2, and no ./embedfleet.db left behind."""
    result = embedfleet(*args, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "embedfleet.db").exists()


@pytest.mark.parametrize("args", [
    ["status", "abcd1234"], ["status", "--collection", "c"], ["jobs"], ["collections"],
    ["export", "--collection", "c", "--out", "x.npy"], ["search", "q", "--collection", "c"],
    ["dlq", "list"], ["dlq", "show", "1"], ["cancel", "abcd"], ["resume", "abcd"], ["dlq", "redrive", "--job", "ab"],
    ["cutover", "--collection", "c"], ["rollback", "--collection", "c"],
    ["drop-version", "--collection", "c", "--collection-version", "2"], ["delete-collection", "c", "--yes"],
    ["reindex", "--collection", "c"], ["metrics", "--port", "0"],
])
def test_reading_commands_never_create_a_database(tmp_path: Path, args: list[str]) -> None:
    """Against a SQLite file that is not there (the default ./embedfleet.db, or --db): one line naming it, exit 2,
    and the file is still not there."""
    result = embedfleet(*args, cwd=tmp_path, check=False)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip() == f"error: no database at {tmp_path / 'embedfleet.db'} (run a job first or pass --db)"
    assert not (tmp_path / "embedfleet.db").exists()
    elsewhere = tmp_path / "sub" / "typo.db"
    result = embedfleet(*args, "--db", f"sqlite:///{elsewhere}", cwd=tmp_path, check=False)
    assert result.returncode == 2 and f"no database at {elsewhere}" in result.stderr
    assert not elsewhere.exists() and not (tmp_path / "embedfleet.db").exists()


def test_the_entry_point_freezes_the_heap_on_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() leaves its objects to the process's end instead of the interpreter's last
    garbage collection (about 0.4 s of every run's exit), on success and on error alike."""
    import gc

    from embedfleet.cli import main

    for argv, code in ((["embedfleet", "--version"], 0), (["embedfleet", "no-such-command"], 2)):
        monkeypatch.setattr("sys.argv", argv)
        gc.unfreeze()
        try:
            with pytest.raises(SystemExit) as exited:
                main()
            assert exited.value.code == code
            assert gc.get_freeze_count() > 0
        finally:
            gc.unfreeze()  # this pytest process goes on: its garbage is collected again


def test_the_lazy_command_list_is_the_commands_own() -> None:
    """COMMANDS (what --help lists without importing a module) names each command's module and
    holds its own short help, so the two cannot drift."""
    from embedfleet.cli.main import COMMANDS

    ctx = click.Context(cli)
    assert set(COMMANDS) == set(cli.list_commands(ctx))
    for name, (module, short) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.callback is not None, name
        assert command.callback.__module__ == f"embedfleet.cli.{module}", name
        assert command.get_short_help_str(limit=1000) == short, name


def test_version_and_help_load_no_heavy_library() -> None:
    """`--version` and `--help` import neither SQLAlchemy, Celery, numpy, pydantic nor rich (the
    target: at most 0.3 s, measured in docs/cli.md), and a lazily loaded command still runs."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from embedfleet.cli import cli\n"
            "try:\n    cli(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('sqlalchemy', 'celery', 'kombu', 'numpy', 'pydantic', 'rich', 'torch') "
            "if m in sys.modules]\n"
            "print(','.join(heavy) or 'none')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "none", result.stdout
