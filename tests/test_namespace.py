"""Everything imports as embedfleet.…: no bare `corpus`, `jobs`, `chunks`, `encode`, `store`, `fleet`
or `settings`, and no source file outside embedfleet/ and benchmarks/."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LAYERS = ("corpus", "jobs", "chunks", "encode", "store", "fleet", "settings", "errors", "tokens",
          "config", "producers", "workers", "storage")


def _package_files() -> list[Path]:
    files = sorted(Path(root, name) for root, _, names in os.walk(REPO / "embedfleet")
                   for name in names if name.endswith(".py"))
    assert len(files) > 30, files
    return files


def test_no_bare_imports_of_the_layer_folders() -> None:
    """An absolute import of store/, fleet/ ... would break on a user's own store.py or settings.py."""
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
    """A settings.py or store.py in the working directory (notebooks, DAG folders) changes nothing."""
    for name in ("settings", "store", "fleet", "jobs", "chunks", "corpus", "encode", "errors"):
        (tmp_path / f"{name}.py").write_text("raise ImportError('the user module was imported')\n")
    code = ("import embedfleet, embedfleet.fleet.celery_app, embedfleet.cli, embedfleet.store.engine\n"
            "print(embedfleet.fleet.celery_app.app.main)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "embedfleet"


def test_no_links_and_no_source_outside_the_package() -> None:
    """Every tracked Python file is under embedfleet/, benchmarks/ or tests/, and none is a
    link: a clone without symlinks (core.symlinks=false, Windows' default) imports the same."""
    tracked = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True)
    links = [line.split("\t")[1] for line in tracked.stdout.splitlines() if line.startswith("120000")]
    assert links == []
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    outside = [f for f in files.stdout.split() if f.split("/")[0] not in ("embedfleet", "benchmarks", "tests")]
    assert outside == []
