"""docs/settings.md, generated from the Settings fields' descriptions (`make docs`).

The page is written from the class itself, so a new field, a changed default or a reworded
description reaches the docs by running the generator, and tests/test_settings_doc.py
fails while the committed page is stale. Imports only the settings (pydantic), never torch.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from pydantic.fields import FieldInfo

from .settings import Settings

ENV_PREFIX = "EMBEDFLEET_"

HEADER = """\
# Settings

<!-- Generated from settings.py by `make docs`; edit the field descriptions there, not this page. -->

Every setting lives in one typed class, `Settings` in `settings.py` (pydantic-settings).
Each field is read from the environment as `EMBEDFLEET_` plus the field name in upper case, for
example `EMBEDFLEET_CHUNK_SIZE=512`. A value that does not parse (a word where a number belongs,
a device that is not one of the choices) stops the command with `error: invalid setting ...`
and exit status 2.

From Python, pass a `Settings` object to the API calls ([api.md](api.md)); on the command line,
`--db` overrides `EMBEDFLEET_DATABASE_URL`, `--chunk-size` `EMBEDFLEET_CHUNK_SIZE`,
`--batch-size` `EMBEDFLEET_BATCH_SIZE` and `worker --device` `EMBEDFLEET_DEVICE`, for one
command (see [cli.md](cli.md)). `HF_HUB_OFFLINE=1` is set unless you set it yourself, so
models are never downloaded at run time.

"""


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def type_name(annotation: object) -> str:
    """A reader's name for a field's type: choices spelled out, not Python's repr."""
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    names: dict[type, str] = {str: "text", int: "integer", float: "number", bool: "true/false"}
    if isinstance(annotation, type) and annotation in names:
        return names[annotation]
    return getattr(annotation, "__name__", str(annotation))


def default_text(value: object) -> str:
    if value == "":
        return '`""` (empty)'
    return f"`{value}`"


def cell(text: str) -> str:
    """Table cells hold one line, and a pipe would end the cell."""
    return " ".join(text.split()).replace("|", "\\|")


def field_row(name: str, field: FieldInfo) -> str:
    if not field.description:
        raise ValueError(f"Settings.{name} has no Field(description=...): the settings page needs one")
    return (
        f"| `{env_var(name)}` | {type_name(field.annotation)} | {default_text(field.default)} "
        f"| {cell(field.description)} |"
    )


def settings_markdown() -> str:
    """The whole of docs/settings.md: the header, then one table row per field, in class order."""
    rows = [field_row(name, field) for name, field in Settings.model_fields.items()]
    table = ["| Environment variable | Type | Default | Meaning |", "|---|---|---|---|", *rows]
    return HEADER + "\n".join(table) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write docs/settings.md from the Settings fields.")
    parser.add_argument("--out", type=Path, help="Write here instead of to stdout.")
    args = parser.parse_args(argv)
    text = settings_markdown()
    if args.out is None:
        print(text, end="")  # noqa: T201 - the generator's output
    else:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
