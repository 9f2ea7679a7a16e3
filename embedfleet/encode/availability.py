"""Is a model there to load? Checked from its files, without torch: by `embedfleet worker`
before it starts (its pool processes load the model after fork) and by `migrate` before it
creates a version."""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS = ("*.safetensors", "pytorch_model.bin", "*/*.safetensors", "*/pytorch_model.bin")


def _problem_in(directory: Path) -> str | None:
    if not any((directory / name).is_file() for name in ("modules.json", "config.json")):
        return f"{directory} has no modules.json or config.json"
    if not any(next(directory.glob(pattern), None) for pattern in WEIGHTS):
        return f"{directory} has no weights (*.safetensors or pytorch_model.bin)"
    return None


def model_problem(name: str) -> str | None:
    """None when `name` resolves to a local model directory with its config and weights (the
    packaged default, a directory, or a hub name already in the local cache); else why not."""
    from .encoder import model_path

    path = Path(model_path(name))
    if path.is_dir():
        return _problem_in(path)
    if name.startswith((".", "/", "~")) or path.exists():
        return f"no model directory at {path}"
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = name if "/" in name else f"sentence-transformers/{name}"
    try:
        cached = snapshot_download(repo, local_files_only=True)
    except (LocalEntryNotFoundError, ValueError, OSError) as exc:
        offline = " and downloads are off (HF_HUB_OFFLINE)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        return f"{name!r} is not a directory and not in the local Hugging Face cache{offline} ({type(exc).__name__})"
    return _problem_in(Path(cached))


def declared_max_tokens(name: str) -> int | None:
    """The longest input the model takes, in tokens, as its files declare it
    (sentence_bert_config.json's max_seq_length), read without torch; None when the model is
    not a local directory or does not say (then only loading it tells)."""
    import json

    from .encoder import model_path

    config = Path(model_path(name)) / "sentence_bert_config.json"
    try:
        value = json.loads(config.read_text()).get("max_seq_length")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None
