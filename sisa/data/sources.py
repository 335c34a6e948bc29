"""Data sources: turn a ``--data SPEC`` into training rows (with stable ids) and a test set.

Specs:
    ``digits``                        scikit-learn's bundled 8x8 digits (offline)
    ``fashion-mnist[:DIR]``, ``mnist[:DIR]``, ``cifar10[:DIR]``
                                      the image datasets, from files on disk
    ``parquet:PATH``, ``csv:PATH``    a table with an id column, a label column and numeric features
    ``imagefolder:DIR``               images as DIR/<class name>/<image file> (torchvision's
                                      ImageFolder layout); ids are the files' paths under DIR
                                      ("cat/001.png"), labels the class folders' names. Fixed
                                      transform: the first image (in id order) decides 1 channel
                                      (grayscale) or 3 (RGB); every image is converted to it and
                                      resized (PIL BILINEAR) to ``--image-size`` (N or HxW, default
                                      the first image's size), kept as uint8 (C, H, W), scale 1/255;
                                      see :mod:`sisa.data.folders`

Every training row carries a stable id: the id column of a table, the index in the original
split for the built-in datasets, the file's path under DIR for an image folder. Features are
kept as stored (uint8 pixels stay uint8) with a fixed ``scale`` applied at training time;
nothing is fitted on the training rows, because a fitted transform would remember rows after
they are deleted.

The sources themselves live in :mod:`sisa.data.images`, :mod:`sisa.data.folders` and
:mod:`sisa.data.tables`, the row types and shared checks in :mod:`sisa.data.dataset`; this
module names them all.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from sisa.data import folders, images, tables
from sisa.data.dataset import (
    DEFAULT_TEST_FRACTION,
    Dataset,
    LoadOptions,
    Table,
    check_features,
    integral_labels,
)
from sisa.errors import SisaError
from sisa.ids import blake2b_keys, id_bytes, id_bytes_array
from sisa.registry import Registry
from sisa.settings import DATASET_DEFAULTS

__all__ = ["DEFAULT_TEST_FRACTION", "SOURCES", "Dataset", "LoadOptions", "Loader", "Table", "check_features",
           "held_out_mask", "integral_labels", "load", "load_rows", "parse_spec"]

Loader = Callable[[Optional[str], LoadOptions], Dataset]
SOURCES: Registry[Loader] = Registry("dataset")
SOURCES.register("digits")(images.digits)
SOURCES.register("fashion-mnist")(images.idx_source(
    "fashion-mnist", "FashionMNIST", "/usr/share/datasets/fashion-mnist", DATASET_DEFAULTS["fashion-mnist"]))
SOURCES.register("mnist")(images.idx_source("mnist", "MNIST", None, DATASET_DEFAULTS["mnist"]))
SOURCES.register("cifar10")(images.cifar10)
SOURCES.register("csv")(tables.csv_source)
SOURCES.register("parquet")(tables.parquet_source)
SOURCES.register("imagefolder")(folders.imagefolder)


def load(spec: str, *, id_col: str = "id", label_col: str = "label",
         test_spec: Optional[str] = None, test_fraction: float = DEFAULT_TEST_FRACTION,
         image_size: Any = None, stream: bool = False) -> Dataset:
    """Load the source named by ``spec``; ``test_spec`` names a separate evaluation set.

    Without ``test_spec`` the source's own test split is used, or else a fraction of the
    rows chosen by a hash of their id (stable whatever the order or the seed). ``image_size``
    (N or (H, W)) is the size ``imagefolder:`` images are resized to. With ``stream``, a
    table's features stay in its file until they are read a batch at a time
    (:mod:`sisa.data.streaming`), so a table larger than memory can be trained on.

    >>> ds = load("digits")
    >>> len(ds.train) + len(ds.test), ds.shape, len(ds.classes)
    (1797, (1, 8, 8), 10)
    """
    if not 0 < test_fraction < 1:
        raise SisaError(f"test fraction must be between 0 and 1, got {test_fraction}")
    name, arg = parse_spec(spec)
    if image_size is not None:
        if name != "imagefolder":
            raise SisaError("--image-size applies to imagefolder: data only")
        image_size = folders.parse_image_size(image_size)
    options = LoadOptions(id_col, label_col, test_fraction, image_size, stream)
    dataset = SOURCES.get(name)(arg, options)
    dataset.spec = spec
    if test_spec is not None:
        test = load_rows(test_spec, dataset, options, need_labels=True, what="test data")
        dataset.test = test
    elif dataset.test is None:
        held_out = held_out_mask(dataset.train.ids, test_fraction)
        dataset.test = dataset.train.take(held_out)
        dataset.train = dataset.train.take(~held_out)
    if len(dataset.train) == 0:
        raise SisaError(f"{spec} has no training rows")
    return dataset


def load_rows(spec: str, like: Dataset, options: LoadOptions, *, need_labels: bool,
              what: str, need_ids: bool = True, ids_hint: str = "name it with --id-col") -> Table:
    """Rows of ``spec`` shaped like ``like``'s training rows (for test data and prediction).

    Tables are matched by feature name; the built-in datasets give their test split; an image
    folder gives all its images, in ``like``'s channel count and size.
    """
    name, arg = parse_spec(spec)
    if name in ("csv", "parquet"):
        if like.feature_names is None:
            raise SisaError(f"{what} {spec} is a table, but the model was trained on {like.spec} images")
        table, _ = tables.read_table(name, arg, options, need_labels=need_labels, what=what,
                                     features=like.feature_names, need_ids=need_ids, stream=options.stream,
                                     ids_hint=ids_hint)
    elif name == "imagefolder":
        table = _folder_rows(spec, arg, like, options, what)
    else:
        other = load(spec, id_col=options.id_col, label_col=options.label_col,
                     test_fraction=options.test_fraction)
        table = other.test
        if tuple(other.shape) != tuple(like.shape):
            raise SisaError(f"{what} {spec} has rows of shape {other.shape}, but the model was "
                            f"trained on shape {tuple(like.shape)}")
    return table


def _folder_rows(spec: str, arg: Optional[str], like: Dataset, options: LoadOptions, what: str) -> Table:
    """Every image of a folder, read in the channel count and size ``like`` was trained on."""
    if len(like.shape) != 3 or like.shape[0] not in (1, 3):
        raise SisaError(f"{what} {spec} is an image folder, but the model was trained on rows of shape "
                        f"{tuple(like.shape)}, not 1- or 3-channel images")
    sized = replace(options, image_size=(int(like.shape[1]), int(like.shape[2])))
    return folders.read_folder(arg, sized, channels=int(like.shape[0]), min_classes=1).train


def absolute_spec(spec: Optional[str]) -> Optional[str]:
    """``spec`` with its path made absolute, as a workspace records it: a retraining "as
    recorded" from another folder must read the same file, not one that happens to share the
    relative name there. Names without a path (``digits``) and standard input stay as given.

    >>> absolute_spec("digits"), absolute_spec("csv:-")
    ('digits', 'csv:-')
    >>> absolute_spec("rows.csv") == "csv:" + os.path.abspath("rows.csv")
    True
    """
    if spec is None:
        return None
    name, arg = parse_spec(spec)
    if arg is None or arg == "-":
        return spec
    return f"{name}:{os.path.abspath(arg)}"


def parse_spec(spec: str) -> tuple[str, Optional[str]]:
    if not isinstance(spec, str) or not spec:
        raise SisaError("empty data spec; use e.g. digits, fashion-mnist, csv:PATH, parquet:PATH or "
                        "imagefolder:DIR")
    name, sep, arg = spec.partition(":")
    if name not in SOURCES:
        suffix = Path(spec).suffix.lower()
        if suffix in (".csv", ".parquet", ".pq"):
            return ("csv" if suffix == ".csv" else "parquet"), spec
        raise SisaError(f"unknown dataset {name!r} in {spec!r}; choose one of: {', '.join(SOURCES)} "
                        f"(tables as csv:PATH or parquet:PATH)")
    return name, (arg if sep else None)


def held_out_mask(ids: np.ndarray, fraction: float) -> np.ndarray:
    """True for the rows held out for testing, chosen by a hash of the id alone."""
    threshold = int(fraction * 2**64)
    canonical = id_bytes_array(ids)
    if canonical is not None:
        if threshold <= 0 or threshold >= 2**64:
            return np.full(len(canonical), threshold > 0, dtype=bool)
        return blake2b_keys(canonical, person=b"sisa-test") < np.uint64(threshold)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(id_bytes(i), digest_size=8, person=b"sisa-test").digest(),
                        "little") < threshold for i in ids),
        dtype=bool, count=len(ids))

