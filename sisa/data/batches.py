"""Rows for ``sisa add``: a batch read like the rows a workspace was trained on."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from sisa.data.dataset import LoadOptions, Table
from sisa.errors import SisaError


def load_batch(spec: str, *, shape: Sequence[int], feature_names: Optional[Sequence[str]],
               id_col: str = "id", label_col: str = "label", image_size: Any = None) -> Table:
    """Every row of ``spec`` (none held out: they are all training rows), its features matched
    to the workspace's: tables by column name, images by shape."""
    from sisa.data import tables
    from sisa.data.sources import load, parse_spec

    name, arg = parse_spec(spec)
    options = LoadOptions(id_col, label_col)
    if name in ("csv", "parquet"):
        if feature_names is None:
            raise SisaError(f"the added data {spec} is a table, but the workspace was trained on images")
        table, _ = tables.read_table(name, arg, options, need_labels=True, what=f"the added data {spec}",
                                     features=list(feature_names))
        return table
    if feature_names is not None:
        raise SisaError(f"the added data {spec} is images, but the workspace was trained on a table")
    kwargs = {"image_size": tuple(image_size)} if image_size is not None else {}
    dataset = load(spec, id_col=id_col, label_col=label_col, **kwargs)
    if tuple(dataset.shape) != tuple(shape):
        raise SisaError(f"the added data {spec} has rows of shape {tuple(dataset.shape)}, but the workspace "
                        f"was trained on shape {tuple(shape)}")
    parts = [t for t in (dataset.train, dataset.test) if t is not None and len(t)]
    if len(parts) == 1:
        return parts[0]
    y = None if any(t.y is None for t in parts) else np.concatenate([t.y for t in parts])
    return Table(np.concatenate([t.ids for t in parts]), np.concatenate([t.X for t in parts]), y)
