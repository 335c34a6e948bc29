"""``imagefolder:DIR``: images in torchvision's ImageFolder layout, ``DIR/<class>/<image>``.

Layout: every subfolder of ``DIR`` is a class, named by the folder (labels are the names as
text; classes are the sorted names). The images of a class are the files under its folder,
subfolders included, whose names end in .png, .jpg, .jpeg, .bmp, .gif or .webp (any case);
other files, files directly in ``DIR``, and hidden files and folders (a name starting with
".") are ignored. A classifier needs two classes, and every class folder needs an image.

Ids: a row's id is its file's path relative to ``DIR`` with "/" separators, e.g.
``"cat/001.png"``; rows are sorted by id. (``sisa delete --ids`` splits on commas: delete a
file whose name holds a comma with ``--ids-file``.)

The transform is fixed, so nothing is fitted on the rows:

* the channel count is decided by the first image in id order: grayscale modes (1, L, LA, I,
  I;16, F) give 1 channel ("L"), anything else 3 ("RGB"); data read against a trained model
  (``--test-data``, ``predict --input``) takes the model's channel count and size instead;
* every image is opened with PIL (the first frame of an animated one; EXIF orientation is not
  applied), 16-bit grayscale scaled to 8 bits (value // 256), converted to that mode (alpha
  is dropped, not composited) and resized with PIL's BILINEAR resampling when its size is not
  the image size;
* the image size is ``--image-size`` (``N`` for N x N, or ``HxW``), else the first image's
  size; sides are 1 to 4096 pixels;
* rows are stored as uint8 arrays of shape (C, H, W) and scaled by 1/255 at training time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sisa.data.dataset import Dataset, LoadOptions, Table, preview
from sisa.errors import SisaError

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
MAX_SIDE = 4096
GRAY_MODES = ("1", "L", "LA", "I", "F")
_SIZE_TEXT = re.compile(r"([0-9]{1,6})(?:[xX]([0-9]{1,6}))?")


def imagefolder(arg: Optional[str], options: LoadOptions) -> Dataset:
    """The loader registered as ``imagefolder``: every image of ``DIR`` as training rows
    (``load`` holds a fraction out for testing by a hash of the id)."""
    return read_folder(arg, options)


def read_folder(arg: Optional[str], options: LoadOptions, *, channels: Optional[int] = None,
                min_classes: int = 2) -> Dataset:
    """The images under ``arg``; ``channels`` (1 or 3) overrides the first image's choice."""
    root = _root(arg)
    files = _class_files(root)
    classes = sorted(files)
    if len(classes) < min_classes:
        raise SisaError(f"{root} has only one class folder ({classes[0]!r}); a classifier needs at least "
                        f"two classes, one subfolder each")
    rows = sorted((_id_of(root, path), name) for name in classes for path in files[name])
    ids = np.array([i for i, _ in rows], dtype=object)
    labels = np.array([name for _, name in rows], dtype=object)
    X = read_images(root, ids.tolist(), options.image_size, channels)
    return Dataset(f"imagefolder:{arg}", Table(ids, X, labels), None, tuple(X.shape[1:]), classes,
                   scale=1 / 255, defaults={"model": "cnn"})


def parse_image_size(value: Any) -> tuple[int, int]:
    """An image size as ``(H, W)``: from ``N`` (N x N), ``(H, W)``, or text ``"N"`` / ``"HxW"``.

    >>> parse_image_size(8), parse_image_size("32x48"), parse_image_size([6, 10])
    ((8, 8), (32, 48), (6, 10))
    """
    if isinstance(value, str):
        match = _SIZE_TEXT.fullmatch(value.strip())
        if match is None:
            raise SisaError(f"image size {value[:40]!r} is not N or HxW (e.g. 32 or 32x48)")
        sides = [int(s) for s in match.groups() if s is not None]
    elif isinstance(value, (list, tuple)):
        sides = list(value)
    else:
        sides = [value]
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or not all(_side_ok(s) for s in sides):
        raise SisaError(f"image size must be N or (H, W) with whole numbers of pixels from 1 to "
                        f"{MAX_SIDE}, got {value!r}")
    return int(sides[0]), int(sides[1])


def _side_ok(side: Any) -> bool:
    return isinstance(side, (int, np.integer)) and not isinstance(side, (bool, np.bool_)) \
        and 1 <= side <= MAX_SIDE


def _root(arg: Optional[str]) -> Path:
    """The folder the spec names, which must exist."""
    if not arg:
        raise SisaError("imagefolder needs a folder: --data imagefolder:DIR, with DIR/<class>/<image>")
    root = Path(arg)
    if not root.exists():
        raise SisaError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise SisaError(f"{root} is not a folder; imagefolder:DIR reads DIR/<class name>/<image files>")
    return root


def _class_files(root: Path) -> dict[str, list[Path]]:
    """Class name -> its image files; every class folder must hold one."""
    try:
        folders = [p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir()]
    except OSError as exc:
        raise SisaError(f"cannot list image folder {root}: {exc}") from None
    if not folders:
        raise SisaError(f"{root} has no class subfolders; imagefolder:DIR expects DIR/<class name>/<image "
                        f"files>, one subfolder per class")
    files = {folder.name: _images_under(folder) for folder in folders}
    empty = sorted(name for name, found in files.items() if not found)
    if empty:
        raise SisaError(f"class folder(s) {preview(empty)} in {root} hold no images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    return files


def _images_under(folder: Path) -> list[Path]:
    """The image files under ``folder`` and its subfolders, hidden ones skipped."""

    def fail(exc: OSError) -> None:
        raise SisaError(f"cannot list image folder {exc.filename}: {exc.strerror or exc}")

    found = []
    for parent, dirs, names in os.walk(folder, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(parent, n) for n in names
                  if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)]
    return found


def _id_of(root: Path, path: Path) -> str:
    """The row id of an image: its path under ``root`` with "/" separators, as UTF-8 text."""
    rel = path.relative_to(root).as_posix()
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise SisaError(f"image file name {rel!r} under {root} is not valid UTF-8; ids are UTF-8 "
                        f"text, so rename it") from None
    return rel


def read_images(root: Path, ids: list[str], size: Any, channels: Optional[int]) -> np.ndarray:
    """The images at ``root / id`` as uint8 (rows, C, H, W), after the module's transform."""
    first = _open(root, ids[0])
    if channels is None:
        channels = 1 if first.mode in GRAY_MODES or first.mode.startswith("I;16") else 3
    height, width = parse_image_size(size) if size is not None else (first.height, first.width)
    if max(height, width) > MAX_SIDE:
        raise SisaError(f"image {root / ids[0]} is {height}x{width} pixels, beyond {MAX_SIDE} a side; "
                        f"choose a smaller size with --image-size")
    mode = "L" if channels == 1 else "RGB"
    X = np.empty((len(ids), channels, height, width), dtype=np.uint8)
    for n, row_id in enumerate(ids):
        image = first if n == 0 else _open(root, row_id)
        pixels = np.asarray(_transform(image, mode, (width, height)), dtype=np.uint8)
        X[n] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return X


def _open(root: Path, row_id: str):
    """The image file ``root / row_id``, decoded; an unreadable one is named."""
    from PIL import Image

    path = root / row_id
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SisaError(f"cannot read image {path}: {exc}") from None


def _transform(image, mode: str, size: tuple[int, int]):
    """``image`` in ``mode`` ("L" or "RGB") at ``size`` (width, height)."""
    from PIL import Image

    if image.mode == "I" or image.mode.startswith("I;16"):
        # PIL clips 16-bit values to 255 when converting to L; keep their top 8 bits instead
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != size:
        image = image.resize(size, Image.BILINEAR)
    return image
