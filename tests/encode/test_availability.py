"""Is a model there to load? Answered from its files, without torch: the packaged default, a
directory, a hub name in the local cache, and a clear reason for everything else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedfleet.encode.availability import model_problem
from embedfleet.settings import DEFAULT_MODEL
from tests.conftest import REPO


def model_dir(path: Path, config: str | None = "modules.json", weights: str | None = "model.safetensors") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if config:
        (path / config).write_text("{}")
    if weights:
        (path / weights).parent.mkdir(parents=True, exist_ok=True)
        (path / weights).write_bytes(b"\0")
    return path


def test_the_packaged_default_is_available() -> None:
    """The default model name resolves to the packaged all-MiniLM-L6-v2, by either of its names."""
    assert model_problem(DEFAULT_MODEL) is None
    assert model_problem("all-MiniLM-L6-v2") is None


@pytest.mark.parametrize(("config", "weights"), [
    ("modules.json", "model.safetensors"),
    ("config.json", "pytorch_model.bin"),
    ("modules.json", "0_Transformer/model.safetensors"),
    ("config.json", "0_Transformer/pytorch_model.bin"),
])
def test_a_directory_with_config_and_weights_is_available(tmp_path: Path, config: str, weights: str) -> None:
    """A config (modules.json or config.json) and weights, at the top or one folder down, suffice."""
    assert model_problem(str(model_dir(tmp_path / "m", config, weights))) is None


def test_a_directory_without_config_says_so(tmp_path: Path) -> None:
    """No modules.json or config.json: the reason names the directory and the missing files."""
    path = model_dir(tmp_path / "m", config=None)
    assert model_problem(str(path)) == f"{path} has no modules.json or config.json"


def test_a_directory_without_weights_says_so(tmp_path: Path) -> None:
    """A config with no weights (an interrupted copy) is not a model."""
    path = model_dir(tmp_path / "m", weights=None)
    assert model_problem(str(path)) == f"{path} has no weights (*.safetensors or pytorch_model.bin)"


@pytest.mark.parametrize("prefix", ["/", "./", "~/"])
def test_a_missing_path_is_not_looked_up_on_the_hub(tmp_path: Path, prefix: str) -> None:
    """A name that is clearly a path (/, ./, ~/) and does not exist is reported as such."""
    name = f"{prefix}no-such-model-{tmp_path.name}"
    assert model_problem(name) == f"no model directory at {Path(name)}"


def test_a_file_is_not_a_model_directory(tmp_path: Path) -> None:
    """An existing file given as the model is refused without a hub lookup."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0")
    assert model_problem(str(weights)) == f"no model directory at {weights}"


def test_an_uncached_hub_name_offline_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub name not in the local cache, downloads off: the reason says both, in one line."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    problem = model_problem("embedfleet-tests/no-such-model-xyz")
    assert problem is not None and "\n" not in problem
    assert problem.startswith("'embedfleet-tests/no-such-model-xyz' is not a directory and not in the local "
                              "Hugging Face cache and downloads are off (HF_HUB_OFFLINE)")


def _in_fresh_interpreter(cache: Path, name: str) -> str:
    code = ("from embedfleet.encode.availability import model_problem\n"
            f"print(repr(model_problem({name!r})))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_cached_hub_name_is_checked_in_the_cache(tmp_path: Path) -> None:
    """A hub name (a bare name means sentence-transformers/<name>) found in the local cache is
    available when its snapshot holds config and weights, and refused with the reason when not."""
    cache = tmp_path / "hub"
    for repo, weights in (("sentence-transformers--cached", "model.safetensors"), ("org--broken", None)):
        (cache / f"models--{repo}" / "refs").mkdir(parents=True)
        (cache / f"models--{repo}" / "refs" / "main").write_text("abc123")
        model_dir(cache / f"models--{repo}" / "snapshots" / "abc123", weights=weights)
    assert _in_fresh_interpreter(cache, "cached") == "None"
    assert _in_fresh_interpreter(cache, "sentence-transformers/cached") == "None"
    assert "has no weights" in _in_fresh_interpreter(cache, "org/broken")


def test_checking_loads_no_model() -> None:
    """`embedfleet worker` checks before its pool forks: the check imports no torch."""
    code = ("import sys\n"
            "from embedfleet.encode.availability import model_problem\n"
            "assert model_problem('all-MiniLM-L6-v2') is None\n"
            "bad = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
