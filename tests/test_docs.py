"""The README stays a front door, and the docs' links and commands point at things that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from embedfleet.cli import cli
from tests.conftest import REPO

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_readme_is_at_most_250_lines() -> None:
    """Detail belongs in docs/: the README is what it is, install, quick starts and pointers."""
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_points_at_an_existing_file_and_heading(page: Path) -> None:
    """A link to a moved or renamed page, or to a heading that no longer exists, fails."""
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.name}: {broken}"


def test_the_link_checker_sees_links_and_only_links() -> None:
    """Links inside code are not links; a missing anchor is caught on a real page."""
    sample = REPO / "docs" / "cli.md"
    assert "settings.md" in relative_links(sample)
    assert "exit-codes" in anchors(sample)
    assert slug("`bench`: measure it") == "bench-measure-it"


def readme_commands() -> list[list[str]]:
    """Each `embedfleet ...` line of the README's shell blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\w+=\$\((.*?)\)", r"\1", line)  # job=$(embedfleet submit ...)
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue  # not a command line (a heredoc's data, say)
            while words and re.match(r"^\w+=", words[0]):
                words = words[1:]  # VAR=value before the command
            if words[:1] == ["embedfleet"] and len(words) > 1:
                commands.append(words[1:])
    return commands


def parse(group: click.Group, args: list[str], parent: click.Context | None = None) -> None:
    """Parse as the CLI would, without running: unknown commands and options fail."""
    ctx = click.Context(group, info_name=group.name, parent=parent)
    options = {name: p for p in group.params if isinstance(p, click.Option) for name in p.opts + p.secondary_opts}
    while args and args[0].startswith("-"):  # the group's own options: `embedfleet -v run ...`, `--help`
        flag, equals, _ = args[0].partition("=")
        if flag in ctx.help_option_names:
            return
        assert flag in options, f"no option {flag!r} on {group.name!r}"
        takes_value = not (options[flag].is_flag or options[flag].count) and not equals
        args = args[2:] if takes_value else args[1:]
    if not args:
        return
    name, *rest = args
    command = group.get_command(ctx, name)
    assert command is not None, f"no command {name!r}"
    if isinstance(command, click.Group):
        parse(command, rest, ctx)
        return
    try:
        command.make_context(name, rest, parent=ctx)
    except click.MissingParameter:
        raise
    except click.BadParameter:
        pass  # a value checked against this machine (a corpus file that is not here)


def test_the_readme_has_commands_to_check() -> None:
    """The extraction finds the quick starts' commands, so the next test checks something."""
    names = {words[0] for words in readme_commands()}
    assert {"run", "export", "submit", "status", "worker", "flower", "reindex", "migrate", "beat"} <= names
    with pytest.raises(click.NoSuchOption):
        parse(cli, ["run", "corpus.jsonl", "--collection", "docs", "--no-such-option"])
    with pytest.raises(AssertionError, match="no command"):
        parse(cli, ["no-such-command"])


@pytest.mark.parametrize("words", readme_commands(), ids=" ".join)
def test_every_readme_command_parses(words: list[str]) -> None:
    """Every command the README shows names a real command and real options, with their values."""
    try:
        parse(cli, words)
    except click.UsageError as exc:
        pytest.fail(f"`embedfleet {' '.join(words)}`: {exc.format_message()}")
