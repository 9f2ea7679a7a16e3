"""The layers only point down: shell (embedfleet/, cli/, bench/) -> producers | workers ->
storage -> config. Producers and workers never import each other. Read from the source
with ast, so a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from tests.conftest import REPO

LAYERS = ("config", "storage", "producers", "workers")
# What each layer may import from the others (the shell may import any layer).
ALLOWED = {
    "config": set(),
    "storage": {"config"},
    "producers": {"storage", "config"},
    "workers": {"storage", "config"},
    "shell": {"config", "storage", "producers", "workers"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "shell"


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
    assert ("embedfleet.producers.submit", "embedfleet.storage.ledger") in edges
    assert ("embedfleet.workers.tasks", "embedfleet.config.celery_app") in edges
    assert ("embedfleet.producers.tasks", "embedfleet.storage.resend") in edges


def test_layers_only_point_down() -> None:
    """No import runs up a layer or sideways between producers and workers."""
    wrong = sorted(f"{a} -> {b}" for a, b in import_edges()
                   if _layer(a) != _layer(b) and _layer(b) not in ALLOWED[_layer(a)])
    assert wrong == []


def test_storage_takes_plain_data_not_wire_messages() -> None:
    """The wire messages are read by producers and workers; storage's functions take plain rows, so the
    collector's rules cannot drift back into storage."""
    wrong = sorted(f"{a} -> {b}" for a, b in import_edges()
                   if _layer(a) == "storage" and b.startswith("embedfleet.config.messages"))
    assert wrong == []
