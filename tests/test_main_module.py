"""`python -m embedfleet` is the `embedfleet` command."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import BIN, REPO


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_help_lists_the_commands() -> None:
    """`python -m embedfleet --help` exits 0 and shows the group's usage and its commands."""
    result = run("-m", "embedfleet", "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: python -m embedfleet" in result.stdout
    for command in ("run", "submit", "worker", "status", "export"):
        assert f"  {command} " in result.stdout, command


def test_it_is_the_same_command_as_the_script() -> None:
    """The module and the installed `embedfleet` script list the same commands."""
    module = run("-m", "embedfleet", "--help")
    script = subprocess.run([str(BIN / "embedfleet"), "--help"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert script.returncode == 0, script.stderr

    assert "Commands:" in module.stdout
    assert module.stdout.split("Commands:", 1)[1] == script.stdout.split("Commands:", 1)[1]


def test_a_usage_error_exits_2_without_a_traceback() -> None:
    """An unknown command is click's usage error (exit 2), one clear message, no traceback."""
    result = run("-m", "embedfleet", "no-such-command")
    assert result.returncode == 2
    assert "No such command 'no-such-command'" in result.stderr and "Traceback" not in result.stderr
