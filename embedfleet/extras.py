"""Optional parts of the install (pyproject's extras): a feature that needs one that is not
installed says which, in one line, instead of an ImportError's traceback.

    pip install 'embedfleet[all]'        # what `make install` and a worker host use
    pip install 'embedfleet[parquet]'    # pyarrow: Parquet corpora and exports
    pip install 'embedfleet[openvino]'   # the OpenVINO encoder backend (auto picks it on x86)
    pip install 'embedfleet[flower]'     # `embedfleet flower`
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """A feature needs a package of an extra that is not installed."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """`module`, imported; MissingExtra naming `extra` when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there but one of its own imports failed: its error, as is
        raise MissingExtra(f"{feature} needs the {top} package, which is not installed: "
                           f"pip install 'embedfleet[{extra}]'") from None
