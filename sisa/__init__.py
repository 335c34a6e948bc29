"""sisa: exact machine unlearning for PyTorch (Sharded, Isolated, Sliced, Aggregated training).

>>> from sisa import SISAClassifier, Settings

The names below load on first use, so that commands which never train (a ``sisa delete``
forwarded to ``sisa serve``) start without importing torch.
"""

from __future__ import annotations

from typing import Any

from sisa.errors import SisaError

__version__ = "0.2.0"
__all__ = ["SISAClassifier", "Settings", "SisaError", "load_bundle", "train_workspace", "__version__"]

_LAZY = {"SISAClassifier": "sisa.estimator", "train_workspace": "sisa.ops.train", "Settings": "sisa.settings",
         "load_bundle": "sisa.ops.bundle"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sisa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
