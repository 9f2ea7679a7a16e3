"""The layers only point down:

    cli -> api -> embedded -> fleet -> jobs -> {chunks, corpus, encode} -> store -> base

where base is settings, tokens, errors and safe_errors. chunks, corpus and encode never
import each other. The embedded run sits above fleet because it runs the fleet's own tasks
in its process (one code path); fleet is Celery only, and nothing below it imports Celery.
Read from the source with ast, so a lazy import inside a function counts as much as one at
the top."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from tests.conftest import REPO

BASE = ("settings", "settings_doc", "tokens", "errors", "safe_errors", "extras")
# Each layer and the layers it may import (besides its own).
BELOW = {
    "base": set(),
    "store": {"base"},
    "chunks": {"store", "base"},
    "corpus": {"store", "base"},
    "encode": {"store", "base"},
    "jobs": {"chunks", "corpus", "encode", "store", "base"},
    "fleet": {"jobs", "chunks", "corpus", "encode", "store", "base"},
    "embedded": {"fleet", "jobs", "chunks", "corpus", "encode", "store", "base"},
    "api": {"embedded", "fleet", "jobs", "chunks", "corpus", "encode", "store", "base"},
}
SHELL = ("cli", "__main__")


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "api"  # embedfleet/__init__.py: the public API
    name = parts[1]
    if name in BASE:
        return "base"
    if name in SHELL:
        return "shell"
    return name


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges() -> list[tuple[str, str]]:
    """(importing module, imported module) for every import inside the package."""
    edges = []
    for folder, _, names in os.walk(REPO / "embedfleet"):
        for name in (n for n in names if n.endswith(".py")):
            path = Path(folder, name)
            module = _module(path)
            package = module.split(".") if name == "__init__.py" else module.split(".")[:-1]
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                    edges += [(module, base)] if node.module else [(module, f"{base}.{a.name}") for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("embedfleet"):
                    edges.append((module, node.module))
                elif isinstance(node, ast.Import):
                    edges += [(module, a.name) for a in node.names if a.name.startswith("embedfleet")]
    return edges


def test_the_scan_sees_the_known_edges() -> None:
    """The scan resolves relative imports: it finds edges that are known to exist."""
    edges = set(import_edges())
    assert ("embedfleet.jobs.submit", "embedfleet.store.ledger") in edges
    assert ("embedfleet.fleet.tasks", "embedfleet.fleet.celery_app") in edges
    assert ("embedfleet.fleet.job_tasks", "embedfleet.chunks.resend") in edges
    assert {layer(a) for a, _ in edges} >= set(BELOW) | {"shell"}


def test_layers_only_point_down() -> None:
    """No import runs up a layer or sideways between chunks, corpus and encode."""
    wrong = sorted(f"{a} -> {b}" for a, b in import_edges()
                   if layer(a) != "shell" and layer(a) != layer(b) and layer(b) not in BELOW[layer(a)])
    assert wrong == []


def test_the_shell_is_on_top() -> None:
    """Nothing below the CLI imports it."""
    wrong = sorted(f"{a} -> {b}" for a, b in import_edges() if layer(b) == "shell" and layer(a) != "shell")
    assert wrong == []


def test_store_takes_plain_data_not_wire_messages() -> None:
    """The wire messages are read by chunks, jobs and the fleet; store's functions take plain rows, so the
    collector's rules cannot drift back into storage."""
    wrong = sorted(f"{a} -> {b}" for a, b in import_edges()
                   if layer(a) == "store" and b.startswith("embedfleet.chunks"))
    assert wrong == []


def test_celery_is_imported_only_by_the_fleet_and_above() -> None:
    """Celery (and kombu) are imported only in fleet/, embedded.py, the API and the CLI."""
    wrong = []
    for path in sorted((REPO / "embedfleet").rglob("*.py")):
        module = _module(path)
        if layer(module) in ("fleet", "embedded", "api", "shell"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            wrong += [f"{module}: {n}" for n in names if n.split(".")[0] in ("celery", "kombu")]
    assert wrong == []
