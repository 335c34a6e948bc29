"""Rows for ``sisa add``: a batch read like the rows a workspace was trained on."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from sisa.data.dataset import Dataset, LoadOptions, Table
from sisa.errors import SisaError


def load_batch(spec: str, *, shape: Sequence[int], feature_names: Optional[Sequence[str]], id_kind: str,
               id_col: str = "id", label_col: str = "label") -> Table:
    """Every row of ``spec`` (none held out: they are all training rows), read as the
    workspace's rows are: a table's features by column name (no other columns), an image
    folder's images in the workspace's channels and size, ids of the workspace's kind."""
    from sisa.data import tables
    from sisa.data.sources import load, load_rows, parse_spec

    name, arg = parse_spec(spec)
    options = LoadOptions(id_col, label_col)
    what = f"the added data {spec}"
    if name in ("csv", "parquet"):
        if feature_names is None:
            raise SisaError(f"{what} is a table, but the workspace was trained on images")
        table, _ = tables.read_table(name, arg, options, need_labels=True, what=what,
                                     features=list(feature_names), exact=True)
        if name == "csv" and id_kind == "str" and table.ids.dtype.kind in "iu":
            # a CSV's ids are text unless they all look like integers; the workspace's are text
            table = Table(np.array([str(i) for i in table.ids.tolist()], dtype=object), table.X, table.y)
        return table
    if feature_names is not None:
        raise SisaError(f"{what} is images, but the workspace was trained on a table")
    like = Dataset(spec, Table(np.zeros(0, dtype=np.int64), np.zeros((0, *shape)), None), None, tuple(shape), [])
    if name == "imagefolder":
        return load_rows(spec, like, options, need_labels=True, what=what)
    dataset = load(spec, id_col=id_col, label_col=label_col)
    if tuple(dataset.shape) != tuple(shape):
        raise SisaError(f"{what} has rows of shape {tuple(dataset.shape)}, but the workspace was trained on "
                        f"shape {tuple(shape)}")
    parts = [t for t in (dataset.train, dataset.test) if t is not None and len(t)]
    y = None if any(t.y is None for t in parts) else np.concatenate([t.y for t in parts])
    return Table(np.concatenate([t.ids for t in parts]), np.concatenate([t.X for t in parts]), y)
