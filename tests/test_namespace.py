"""Everything imports as embedfleet.…: no bare `config`, `producers`, `workers` or `storage`."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LAYERS = ("config", "producers", "workers", "storage")


def _package_files() -> list[Path]:
    files = sorted(Path(root, name) for root, _, names in os.walk(REPO / "embedfleet")
                   for name in names if name.endswith(".py"))
    assert len(files) > 30, files
    return files


def test_no_bare_imports_of_the_layer_folders() -> None:
    """An absolute import of config/producers/workers/storage would break on a user's own config.py."""
    bare = []
    for path in _package_files() + sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bare += [f"{path.relative_to(REPO)}:{node.lineno} {name}" for name in names
                     if name.split(".")[0] in LAYERS]
    assert bare == []


def test_a_users_config_module_does_not_shadow_the_package(tmp_path: Path) -> None:
    """A config.py or storage.py in the working directory (notebooks, DAG folders) changes nothing."""
    for name in ("config", "storage", "workers", "producers"):
        (tmp_path / f"{name}.py").write_text("raise ImportError('the user module was imported')\n")
    code = ("import embedfleet, embedfleet.config.celery_app, embedfleet.cli, embedfleet.storage.engine\n"
            "print(embedfleet.config.celery_app.app.main)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "embedfleet"
